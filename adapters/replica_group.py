"""A group of persistent replica processes answering calls under a deadline: how replica backends run.

    group = ReplicaGroup("bnconf.adapters.torch_replicas:serve", processes=4, env={...}, timeout=60)
    answers = group.call([payload_0, payload_1, payload_2, payload_3])   # one payload per process
    group.close()

Each process is `python -m bnconf.adapters.replica_group ENTRY RANK PROCESSES`, started on the first call with
os.environ updated by `env` and by MASTER_ADDR/MASTER_PORT (a free local port, for torch.distributed), so a
framework that reads its configuration at import (XLA's host device count, TensorFlow's logical devices)
gets it before it is imported. The process calls `ENTRY(rank, processes)` once, which returns a handler
(the place to create process groups and device meshes, reused by every later call), then answers each
payload with `handler(payload)`.

A call that does not complete within `timeout` seconds (`startup_timeout` for the first, which includes
imports and process-group set-up) kills every process of the group and raises `ReplicaTimeout`; a process
that dies raises `ReplicaCrash` with its exit status and the end of its stderr, and the group is stopped
too (its peers would wait forever in the next collective). The next call starts a fresh group. A handler's
exception comes back as itself. Processes die with their parent (Linux PR_SET_PDEATHSIG) and are stopped at
exit, so none survives a run. Framework-free: the standard library only.
"""

import atexit
import os
import pickle
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from .replica_protocol import ReplicaCrash, ReplicaTimeout
from .subprocess_backend import _raised, _rebuilt

_HEADER = struct.Struct("!Q")
_PORT_TAKEN = re.compile(r"address already in use|EADDRINUSE", re.IGNORECASE)
_STDERR_TAIL = 1500
_GROUPS: list["ReplicaGroup"] = []


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ReplicaGroup:
    """`processes` persistent processes serving `entry` ("module:function"), called together."""

    def __init__(self, entry: str, processes: int, env: dict[str, str] | None = None, timeout: float = 60.0,
                 startup_timeout: float = 180.0, label: str | None = None):
        self.entry, self.processes, self.env = entry, processes, dict(env or {})
        self.timeout, self.startup_timeout = timeout, startup_timeout
        self.label = label or entry
        self._procs: list[subprocess.Popen] = []
        self._stderr: list = []
        self._fresh = True
        _GROUPS.append(self)

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs)

    def _start(self) -> None:
        self.close()
        env = {**os.environ, **self.env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        for rank in range(self.processes):
            err = tempfile.TemporaryFile(mode="w+b")
            self._stderr.append(err)
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", __name__, self.entry, str(rank), str(self.processes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env))
        self._fresh = True

    def call(self, payloads: list) -> list:
        """Send payloads[k] to process k; their answers, in order. ReplicaTimeout / ReplicaCrash stop the group.
        A group that dies while starting because its port was taken meanwhile (free_port() releases the port it
        found, and another process may bind it before the replicas do) is started once more on another port."""
        starting = not self.running
        try:
            return self._call(payloads)
        except ReplicaCrash as e:
            if not (starting and _PORT_TAKEN.search(str(e))):
                raise
        return self._call(payloads)

    def _call(self, payloads: list) -> list:
        if len(payloads) != self.processes:
            raise ValueError(f"{self.label}: {len(payloads)} payloads for {self.processes} processes")
        if not self.running:
            self._start()
        deadline = time.monotonic() + (self.startup_timeout if self._fresh else self.timeout)
        try:
            for p, payload in zip(self._procs, payloads):
                data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
                p.stdin.write(_HEADER.pack(len(data)) + data)
                p.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._crashed() from None
        answers = self._collect(deadline)
        self._fresh = False
        for status, value in answers:
            if status != "ok":
                raise _rebuilt(self.label, *value)
        return [value for _, value in answers]

    def _collect(self, deadline: float) -> list:
        buffers = {k: b"" for k in range(self.processes)}
        answers: dict[int, tuple] = {}
        sel = selectors.DefaultSelector()
        for k, p in enumerate(self._procs):
            os.set_blocking(p.stdout.fileno(), False)
            sel.register(p.stdout, selectors.EVENT_READ, k)
        try:
            while len(answers) < self.processes:
                left = deadline - time.monotonic()
                if left <= 0:
                    waiting = sorted(set(range(self.processes)) - set(answers))
                    self.close()
                    raise ReplicaTimeout(f"{self.label}: replica process(es) {waiting} of {self.processes} did not "
                                         f"answer within {self.timeout if not self._fresh else self.startup_timeout:g} s "
                                         "(a collective that never completes); the group was stopped")
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    k = key.data
                    chunk = os.read(key.fileobj.fileno(), 1 << 20)
                    if not chunk:
                        raise self._crashed(k)
                    buffers[k] += chunk
                    if len(buffers[k]) >= _HEADER.size:
                        (size,) = _HEADER.unpack_from(buffers[k])
                        if len(buffers[k]) >= _HEADER.size + size:
                            answers[k] = pickle.loads(buffers[k][_HEADER.size:_HEADER.size + size])
                            sel.unregister(key.fileobj)
                for k, p in enumerate(self._procs):
                    if k not in answers and p.poll() is not None and k not in [x.data for x in sel.get_map().values()]:
                        raise self._crashed(k)
        finally:
            sel.close()
        return [answers[k] for k in range(self.processes)]

    def _crashed(self, rank: int | None = None) -> ReplicaCrash:
        time.sleep(0.1)
        dead = [k for k, p in enumerate(self._procs) if p.poll() is not None]
        k = rank if rank is not None else (dead[0] if dead else 0)
        p = self._procs[k]
        try:
            code = p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        err = self._stderr[k]
        err.seek(0)
        tail = err.read().decode(errors="replace")[-_STDERR_TAIL:].strip()
        self.close()
        status = "closed its output" if code is None else _signal_text(code)
        return ReplicaCrash(f"{self.label}: replica process {k} of {self.processes} died ({status})"
                            + (f"; its stderr ends with:\n{tail}" if tail else ""))

    def close(self) -> None:
        """Stop every process of the group (killed: a peer may be blocked in a collective)."""
        for p in self._procs:
            if p.poll() is None:
                p.kill()
        for p in self._procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for stream in (p.stdin, p.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        for err in self._stderr:
            err.close()
        self._procs, self._stderr = [], []


@atexit.register
def close_all() -> None:
    """Stop every group's processes (registered to run at exit)."""
    for g in _GROUPS:
        g.close()


# ---- the replica side -----------------------------------------------------------------------------------


def _read_exactly(stream, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _serve(entry: str, rank: int, processes: int) -> None:
    import importlib

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answer stream
    sys.stdout = sys.stderr
    handler, setup_error = None, None
    while True:
        header = _read_exactly(requests, _HEADER.size)
        if header is None:
            return
        payload = pickle.loads(_read_exactly(requests, _HEADER.unpack(header)[0]))
        try:
            if handler is None and setup_error is None:
                try:
                    module, _, attr = entry.rpartition(":")
                    handler = getattr(importlib.import_module(module), attr)(rank, processes)
                except Exception as e:  # noqa: BLE001 - reported with every call
                    setup_error = e
            if setup_error is not None:
                raise setup_error
            data = pickle.dumps(("ok", handler(payload)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - everything goes back to the parent
            data = pickle.dumps(("raised", _raised(e)), protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(_HEADER.pack(len(data)) + data)
        answers.flush()


if __name__ == "__main__":
    import faulthandler

    faulthandler.enable()
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
