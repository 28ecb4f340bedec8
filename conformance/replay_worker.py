"""The child process of `bnconf replay` (`repro.replay`): runs one saved case on the backend the parent chose.

    python -m bnconf.conformance.replay_worker FD      job on stdin: {"folder": ..., "target": ..., "exact": ...,
                                                       "records": [[loadable target, target as named], ...]}

It sends JSON lines on the pipe FD, and the parent, which enforces the time limit and kills this process's
whole session when it runs out, prints them:

    {"event": "bad_input", "kind": "TargetError" | "BackendError" | "CaseError" | "RecordsError", "message": ...}
    {"event": "loaded", "name": <the backend's name>}                 the target imported, the case begins
    {"event": "line", "text": ...}                                    one line of the comparison
    {"event": "raised", "where": ..., "error": "<Type>: <message>"}   the backend (or its outputs) failed
    {"event": "result", "code": 0 | 1}                                conforms now / still fails
"""

import json
import os
import signal
import sys


class _BackendRaised(Exception):
    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


class _Watched:
    """The backend, with an exception from its own run() told apart from one in judging what it returned."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def run(self, mode, request):
        try:
            return self._backend.run(mode, request)
        except Exception as e:  # noqa: BLE001 - whatever the backend raises is the replay's finding
            raise _BackendRaised(e) from e


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _work(job: dict, send) -> None:
    from ..adapters.protocol import BackendError, supports_layout, unavailable
    from ..adapters.registry import TargetError, load
    from .engine import assess
    from .known import discrepancies_for
    from .repro import CaseError, assessment_lines, read_case, select_backend, shown
    from .user_records import RecordsError, attach_targets

    try:
        case = read_case(job["folder"])
        backend = select_backend(load(job["target"]), case, job["target"], job["exact"])
        label = f"backend {shown(backend.name, 100)!r} of {job['target']}"
        if case.mode not in backend.modes or not supports_layout(backend, case.dtype) or case.device not in backend.devices:
            raise CaseError(f"{label} does not run {case.mode.value} {case.dtype} on {case.device} (it declares modes "
                            f"{sorted(m.value for m in backend.modes)}, dtypes {list(backend.dtypes)}, devices "
                            f"{list(backend.devices)}); name a backend that runs the saved case")
        reason = unavailable(backend, case.device)
        if reason:
            raise CaseError(f"{label} cannot run on {case.device} here: {reason}; replay it where {case.device} "
                            "is available")
        attach_targets([backend], job.get("records", ()))  # the records the parent chose apply, as in the run
    except (TargetError, BackendError, CaseError, RecordsError) as e:
        send(event="bad_input", kind=type(e).__name__, message=str(e))
        return
    send(event="loaded", name=backend.name)
    try:
        # the records that apply to the backend itself (attached ones are found by the backend, not the wrapper)
        a = assess(_Watched(backend), case.mode, case.inputs, case.dtype, case.device, registry=discrepancies_for(backend))
    except _BackendRaised as e:
        send(event="raised", where="the backend raised", error=_one_line(e.error))
        return
    except Exception as e:  # noqa: BLE001 - outputs bnconf cannot judge (wrong shapes, types) are the backend's too
        send(event="raised", where="the backend's outputs could not be judged:", error=_one_line(e))
        return
    lines, code = assessment_lines(backend.name, case.mode, case.dtype, case.device, a, backend=backend)
    for line in lines:
        send(event="line", text=line)
    send(event="result", code=code)


def _die_with_the_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (as isolation's workers do)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(fd: int) -> int:
    job = json.loads(sys.stdin.read())
    out = os.fdopen(fd, "w", buffering=1)

    def send(**event) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    _work(job, send)
    return 0


if __name__ == "__main__":
    import faulthandler

    _die_with_the_parent()
    faulthandler.enable()  # a segfault leaves "Fatal Python error: Segmentation fault" on stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    raise SystemExit(main(int(sys.argv[1])))
