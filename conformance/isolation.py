"""Each backend's battery in its own child process, with a time limit and a memory limit.

A buggy kernel can segfault, a framework can hang or allocate without bound: none of it may take the run,
or the other backends' results, down with it. The parent starts one worker per backend
(`python -m bnconf.conformance.isolation`), hands it the backend's target and cells on stdin, and reads
one JSON line per event from a pipe:

    {"event": "case", "cell": i, "input": "<describe(inputs)>", "folder": "<saved case>"}   before each case
    {"event": "cell", "cell": i, "result": {CellResult}}                                    after each cell
    {"event": "inferred", "rows": [...]}                                                    (validate only)
    {"event": "edge", "rows": [...]}                                                        edge-case outcomes

The parent kills the worker when a case runs longer than `Limits.seconds` or the worker's process tree
holds more than `Limits.memory_bytes` resident, and reports the cell as "timed out", "out of memory" or
"crashed" (signal or exit code, with the last line of the worker's stderr) together with the input it was
running, copied as a replayable case folder (`bnconf replay`). The backend's remaining cells run in a fresh
worker. Workers start in their own session, so Ctrl-C reaches only the parent, which stops them.
"""

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..spec import Mode
from .battery import CellResult, QuantityRow, describe, run_cell

FAILED = ("crashed", "timed out", "out of memory", "not run")
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Limits:
    """Per case (start-up included) wall-clock seconds; resident memory of the worker and its children."""

    seconds: float = 120.0
    memory_bytes: int = 8 * 2**30


def cell_from_dict(d: dict) -> CellResult:
    return CellResult(**{**d, "rows": [QuantityRow(**r) for r in d.get("rows", [])]})


# ---------------------------------------------------------------- the parent


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its descendants (Linux /proc; 0 where it cannot be read)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def _stop(proc: subprocess.Popen) -> None:
    """Kill the worker's whole session (its own children too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class _Worker:
    """One worker process and the events it has sent."""

    def __init__(self, job: dict, scratch: Path):
        self.stderr = open(scratch / "stderr.txt", "w+b")  # noqa: SIM115 - read back after the worker ends
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bnconf.conformance.isolation", str(write)],
            stdin=subprocess.PIPE, stdout=self.stderr, stderr=self.stderr, pass_fds=(write,), start_new_session=True,
        )
        os.close(write)
        self.pipe = os.fdopen(read, "rb", buffering=0)
        self.proc.stdin.write(json.dumps(job).encode())
        self.proc.stdin.close()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.pipe, selectors.EVENT_READ)
        self.buffer = b""

    def events(self, timeout: float) -> tuple[list[dict], bool]:
        """(events that arrived within `timeout`, whether the pipe is closed)."""
        if not self.selector.select(timeout):
            return [], False
        chunk = self.pipe.read(1 << 16)
        if not chunk:
            return [], True
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()], False

    def last_stderr_line(self) -> str:
        """Python's fatal-error line (faulthandler) when there is one, else the last line of stderr."""
        self.stderr.seek(0)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith("Fatal Python error")]
        return (fatal or lines or [""])[-1][:300]

    def close(self) -> None:
        if self.proc.poll() is None:
            _stop(self.proc)
        self.selector.close()
        self.pipe.close()
        self.stderr.close()


def _failure(what: str, case: dict | None, crash_dir: Path, cells_done: int) -> str:
    """The failed cell's reason: what happened and the input it was running (kept as a replayable folder)."""
    if case is None:
        return f"{what}, " + ("between cases" if cells_done else "before its first case (importing or starting the backend)")
    reason = f"{what} while running {case['input']}"
    if case.get("folder") and Path(case["folder"]).is_dir():
        kept = crash_dir / Path(case["folder"]).name
        shutil.copytree(case["folder"], kept, dirs_exist_ok=True)
        reason += f"; replay: bnconf replay {kept}"
    return reason


def _run_worker(target: str, name: str, cells: list, examples: int, seed: int, limits: Limits, crash_dir: Path,
                extras: dict, on_cell) -> tuple[dict, dict, tuple[int, str, str] | None]:
    """Run `cells` (indices into the caller's list, with (device, dtype, mode)) in one worker, then the
    `extras` it asks for ({"infer": bool, "edge": bool}).

    Returns (results by index, {"inferred"|"edge": rows} that arrived, failure): failure is (cell index or -1,
    kind, reason)."""
    results, extra_rows = {}, {}
    with tempfile.TemporaryDirectory(prefix="bnconf-worker-") as tmp:
        scratch = Path(tmp)
        job = dict(target=target, backend=name, examples=examples, seed=seed, scratch=str(scratch), **extras,
                   cells=[[i, device, dtype, mode.value] for i, device, dtype, mode in cells])
        worker = _Worker(job, scratch)
        case, started, failure, closed = None, time.monotonic(), None, False
        try:
            while failure is None:
                events, closed = worker.events(POLL_SECONDS)
                for e in events:
                    started = time.monotonic()
                    if e["event"] == "case":
                        case = e
                    elif e["event"] == "cell":
                        case = None
                        results[e["cell"]] = cell = cell_from_dict(e["result"])
                        if on_cell:
                            on_cell(e["cell"], cell)
                    elif e["event"] in ("inferred", "edge"):
                        extra_rows[e["event"]] = e["rows"]
                if closed:
                    code = worker.proc.wait()
                    if code == 0 and len(results) == len(cells):
                        break
                    what = f"crashed with {_signal_name(code)}" if code < 0 else f"exited with code {code}"
                    last = worker.last_stderr_line()
                    kind = "out of memory" if "MemoryError" in last else "crashed"
                    failure = (kind, f"{what}" + (f" ({last})" if last else ""))
                elif time.monotonic() - started > limits.seconds:
                    _stop(worker.proc)
                    failure = ("timed out", f"timed out: no result within {limits.seconds:g} s")
                else:
                    rss = tree_rss(worker.proc.pid)
                    if rss > limits.memory_bytes:
                        _stop(worker.proc)
                        failure = ("out of memory", f"out of memory: {rss / 2**30:.2f} GiB resident, over the "
                                                    f"{limits.memory_bytes / 2**30:g} GiB limit")
            if failure is not None:
                index = case["cell"] if case else -1
                return results, extra_rows, (index, failure[0], _failure(failure[1], case, crash_dir, len(results)))
            return results, extra_rows, None
        finally:
            worker.close()


def run_isolated(cells, examples: int, seed: int, limits: Limits = Limits(), crash_dir="bnconf-crashes",
                 progress=None, on_cell=None, infer: bool = False, edge: bool = False) -> tuple[list[CellResult], dict]:
    """The battery over `cells` ((backend, device, dtype, mode) tuples), one worker per backend, and per
    backend the convention inference (`infer`) and the edge cases (`edge`) on the cells' devices and dtypes.

    Backends loaded from a target (every built-in, every `--backend`) run isolated; an object built in
    this process (no target to load it from again) runs here. `on_cell(result)` sees each result as it
    arrives. Returns (results in the cells' order, {"inferred": {backend: rows}, "edge": {backend: rows}})."""
    from ..adapters.registry import origin

    crash_dir = Path(crash_dir)
    results: list[CellResult | None] = [None] * len(cells)
    extras: dict[str, dict] = {"inferred": {}, "edge": {}}
    groups: dict[int, list[int]] = {}
    for i, (backend, *_rest) in enumerate(cells):
        groups.setdefault(id(backend), []).append(i)

    def arrived(i: int, cell: CellResult) -> None:
        results[i] = cell
        if progress:
            backend, device, dtype, mode = cells[i]
            progress(f"[{sum(r is not None for r in results)}/{len(cells)}] {backend.name} {device} {dtype} {mode.value}: "
                     f"{cell.status}")
        if on_cell:
            on_cell(cell)

    for indices in groups.values():
        backend = cells[indices[0]][0]
        target = origin(backend)
        if target is None:  # nothing to load it from in a child: run it here
            for i in indices:
                arrived(i, run_cell(*cells[i], examples, seed))
            for kind, rows in extras_for(backend, [cells[i][1:] for i in indices], infer, edge).items():
                extras[kind][backend.name] = rows
            continue
        todo = list(indices)
        while todo:
            done, rows, failure = _run_worker(target, backend.name, [(i, *cells[i][1:]) for i in todo], examples, seed,
                                              limits, crash_dir, {"infer": infer, "edge": edge}, arrived)
            for kind, kind_rows in rows.items():
                extras[kind][backend.name] = kind_rows
            todo = [i for i in todo if i not in done]
            if failure is None:
                break
            index, kind, reason = failure
            first = index if index in todo else todo[0]
            failed = [first] if index >= 0 else list(todo)  # a start-up failure would repeat: give up on the rest
            for i in failed:
                _, device, dtype, mode = cells[i]
                arrived(i, CellResult(backend.name, backend.convention.name, device, dtype, mode.value, kind, reason))
            todo = [i for i in todo if i not in failed]
    return list(results), extras


def extras_for(backend, cells, infer: bool, edge: bool) -> dict:
    """Inference and edge-case rows for `backend` over the (device, dtype, mode) `cells` it ran."""
    out = {}
    if infer:
        from .inference import report_rows

        out["inferred"] = report_rows(backend)
    if edge:
        from .edge import as_row, run_edge_cases

        dtypes = tuple(dict.fromkeys(dtype for _, dtype, _ in cells))
        out["edge"] = [as_row(o) for device in dict.fromkeys(d for d, _, _ in cells)
                       for o in run_edge_cases(backend, device, dtypes)]
    return out


# ---------------------------------------------------------------- the worker


def _worker(fd: int) -> int:
    from ..adapters.registry import load
    from .repro import save_case

    job = json.loads(sys.stdin.read())
    out = os.fdopen(fd, "w", buffering=1)

    def send(**event) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    backend = next(b for b in load(job["target"]) if b.name == job["backend"])
    scratch = Path(job["scratch"]) / "cases"
    for index, device, dtype, mode in job["cells"]:

        @contextmanager
        def watched(backend, mode, inputs, dtype, device, index=index):
            folder = save_case(scratch, backend, mode, inputs, dtype, device)
            send(event="case", cell=index, input=f"{mode.value} {dtype} {device}: {describe(inputs)}", folder=str(folder))
            yield
            shutil.rmtree(folder, ignore_errors=True)

        cell = run_cell(backend, device, dtype, Mode(mode), job["examples"], job["seed"], watch=watched)
        send(event="cell", cell=index, result=asdict(cell))
    cells = [(device, dtype, Mode(mode)) for _, device, dtype, mode in job["cells"]]
    for kind, rows in extras_for(backend, cells, job.get("infer", False), job.get("edge", False)).items():
        send(event=kind, rows=rows)
    return 0


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()  # a segfault leaves "Fatal Python error: Segmentation fault" and the stack on stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    raise SystemExit(_worker(int(sys.argv[1])))
