"""A backend that runs in a persistent child process: crash isolation, and one framework configuration per
process where a framework fixes it at import time (Keras reads KERAS_BACKEND once).

    proxy = SubprocessBackend("bnconf.adapters.example_numpy:BACKEND")               # metadata from the child
    proxy = SubprocessBackend("pkg.mod:BACKENDS", name="x[jax]", env={"KERAS_BACKEND": "jax"}, local=spec)

The child is `python -m bnconf.adapters.subprocess_backend`, started on the first call that needs it with
os.environ updated by `env`, and reused by every later call and by every proxy with the same (target, env):
the start-up cost is paid once per process. It loads `target` (a backend or a sequence of them, as
`registry.load` does) and serves the backend called `name` (the only one when `name` is None).

Metadata (name, convention, modes, dtypes, devices, ranks, channel_axes, precision, versions, unavailable)
comes from `local`, an object in this process that declares it without running anything (so that importing
the proxy's module imports no framework), or, without `local`, is asked of the child at construction.

Requests, outputs and exceptions travel as pickles over the child's stdin/stdout (the child's own fd 1 is
redirected to its stderr, so that a library that prints cannot corrupt the stream; stderr goes to a
temporary file whose tail explains a crash). An exception in the child is raised here with the child's
message and traceback as a note; a child that dies raises RuntimeError naming the backend and the exit
code, and the next call starts a fresh one. Children are shut down at exit. Framework-free: the standard
library and bnconf's protocol only.
"""

import atexit
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import traceback

from .protocol import channel_axes, declared_precision

_STDERR_TAIL = 2000  # characters of the child's stderr quoted in a crash report


class RemoteError(RuntimeError):
    """An exception from the child that could not be sent back as itself (not picklable)."""


class _Child:
    """One child process serving one target under one environment; calls are serialized by a lock."""

    def __init__(self, target: str, env: dict[str, str]):
        self.target, self.env = target, dict(env)
        self.process: subprocess.Popen | None = None
        self.stderr = None
        self.lock = threading.Lock()

    def _start(self) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+b")
        self.process = subprocess.Popen(
            [sys.executable, "-m", __name__, self.target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env={**os.environ, **self.env},
        )

    def call(self, label: str, op: str, *args):
        """Send (op, args) and return the child's answer; raise what the child raised, or RuntimeError if it died."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self._start()
            try:
                pickle.dump((op, args), self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self.process.stdin.flush()
                status, value = pickle.load(self.process.stdout)
            except (EOFError, BrokenPipeError, pickle.UnpicklingError, ConnectionError) as e:
                raise self._died(label) from e
            except BaseException:  # interrupted mid-exchange: the stream is out of step, start afresh next time
                self.stop(kill=True)
                raise
        if status == "ok":
            return value
        raise _rebuilt(label, *value)

    def _died(self, label: str) -> RuntimeError:
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the stream broke but the process lingers: end it
            self.process.kill()
            code = self.process.wait()
        self.process = None
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace")[-_STDERR_TAIL:].strip()
        self.stderr.close()
        return RuntimeError(
            f"{label}: the child process running {self.target} died with exit code {code}"
            + (f"; its stderr ends with:\n{tail}" if tail else "")
            + "\n(the next call starts a new one)"
        )

    def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            self.process.stdin.close()  # the child exits at end of input
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _rebuilt(label: str, pickled: bytes | None, message: str, child_traceback: str) -> BaseException:
    """The child's exception as itself where it unpickles here, else a RemoteError with its message."""
    try:
        exc = pickle.loads(pickled) if pickled is not None else None
    except Exception:  # noqa: BLE001 -- a type this process cannot rebuild
        exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(f"{label}: {message}")
    exc.add_note(f"raised in the child process of {label}:\n{child_traceback}")
    return exc


_CHILDREN: dict[tuple, _Child] = {}


def _child(target: str, env: dict[str, str]) -> _Child:
    key = (target, tuple(sorted(env.items())))
    if key not in _CHILDREN:
        _CHILDREN[key] = _Child(target, env)
    return _CHILDREN[key]


@atexit.register
def shutdown() -> None:
    """Stop every child process (registered to run at exit)."""
    for child in _CHILDREN.values():
        child.stop()


class SubprocessBackend:
    """A proxy with the remote backend's metadata whose `run` executes in the child process."""

    def __init__(self, target: str, name: str | None = None, env: dict[str, str] | None = None, local=None):
        self.target, self.remote_name = target, name
        self._child = _child(target, env or {})
        meta = _metadata(local) if local is not None else self._call("describe")
        self._precisions = meta.pop("precisions")
        self._unavailable = meta.pop("unavailable")
        self._versions = meta.pop("versions")
        self._local = local
        for attr, value in meta.items():
            setattr(self, attr, value)

    def _call(self, op: str, *args):
        return self._child.call(self.remote_name or self.target, op, self.remote_name, *args)

    def run(self, mode, request):
        return self._call("run", mode, request)

    def precision(self, dtype: str, device: str):
        if self._local is not None:
            return declared_precision(self._local, dtype, device)
        return self._precisions[(dtype, device)]

    def unavailable(self, device: str) -> str | None:
        if self._local is not None:
            check = getattr(self._local, "unavailable", None)
            return check(device) if callable(check) else None
        return self._unavailable.get(device)

    def versions(self) -> dict[str, str]:
        return self._versions() if callable(self._versions) else dict(self._versions)

    def __repr__(self) -> str:
        return f"SubprocessBackend({self.target!r}, name={self.remote_name!r})"


def _metadata(backend, eager: bool = False) -> dict:
    """What a proxy mirrors. Methods stay methods of `backend` unless `eager` (the child answers once)."""
    meta = {
        attr: getattr(backend, attr) for attr in ("name", "convention", "modes", "dtypes", "devices")
    }
    meta["ranks"] = tuple(getattr(backend, "ranks", backend.convention.ranks))
    meta["channel_axes"] = channel_axes(backend)
    versions = getattr(backend, "versions", None)
    meta["versions"] = (versions() if callable(versions) else {}) if eager else (versions or {})
    if eager:
        check = getattr(backend, "unavailable", None)
        meta["unavailable"] = {d: check(d) if callable(check) else None for d in backend.devices}
        meta["precisions"] = {(t, d): declared_precision(backend, t, d) for t in backend.dtypes for d in backend.devices}
    else:
        meta["unavailable"], meta["precisions"] = None, None
    return meta


# ---- the child side -------------------------------------------------------------------------------------

def _select(backends: list, name: str | None):
    if name is None:
        if len(backends) != 1:
            raise ValueError(f"the target holds {len(backends)} backends; name one of {[b.name for b in backends]}")
        return backends[0]
    for b in backends:
        if b.name == name:
            return b
    raise ValueError(f"no backend named {name!r} in the target; it has {[b.name for b in backends]}")


def _raised(e: Exception) -> tuple[bytes | None, str, str]:
    """(the exception pickled, or None if it cannot be, its one-line message, the child's traceback)."""
    try:
        pickled = pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001
        pickled = None
    return pickled, "".join(traceback.format_exception_only(e)).strip(), traceback.format_exc()


def _serve(target: str) -> None:
    """Answer (op, (name, *args)) pickles on stdin until it closes: describe, run."""
    from .registry import load

    requests, answers = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answer stream
    sys.stdout = sys.stderr
    backends = None
    while True:
        try:
            op, args = pickle.load(requests)
        except EOFError:
            return
        try:
            if backends is None:
                backends = load(target)
            backend = _select(backends, args[0])
            if op == "describe":
                value = _metadata(backend, eager=True)
            elif op == "run":
                value = backend.run(*args[1:])
            else:
                raise ValueError(f"unknown operation {op!r}")
            payload = pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 -- everything, an unpicklable result too, goes back to the parent
            payload = pickle.dumps(("raised", _raised(e)), protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(payload)
        answers.flush()


if __name__ == "__main__":
    _serve(sys.argv[1])
