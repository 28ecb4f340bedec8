"""A failing case as a small standalone folder, and replaying it.

    <folder>/case.json    backend target and name, mode, dtype, device, axis, eps, momentum, versions, and the
                          run's records files (`--records` targets, as named)
    <folder>/inputs.npz   x, gamma, beta, running mean/var, dy (those present; float64, no pickles)
    <folder>/repro.py     `python repro.py TARGET` reruns the case on the backend TARGET and prints each
                          quantity's comparison

The folder can be attached to an upstream bug report; `bnconf replay <folder> --backend TARGET` does what
repro.py does. A folder is data from whoever sent it, so replaying never imports code it names on its own:
the backend is the TARGET the user gives, or the folder's own `target` only when the user says they trust
it (`--trust-target`, or "y" at a prompt shown only on a terminal). The records files the run used
(`--records`) are loaded the same way: those the user names (`--records TARGET`, repeatable), or those
case.json names only with `--trust-target`; the replay line a run prints names them. case.json is read field
by field with its types checked and inputs.npz without unpickling; a field that is wrong is a CaseError
naming it.

The case runs in a child process (`python -m bnconf.conformance.replay_worker`) with a time limit: a
backend that raises, crashes or hangs is the replay's finding (exit status 1), never bnconf's failure.
"""

import contextlib
import hashlib
import json
import math
import os
import platform
import re
import reprlib
import selectors
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..spec import InputError, Inputs, Mode, RunningStats
from ..spec.error_model import split_layout
from ..spec.formats import FORMATS

FORMAT = "bnconf-case/1"
ARRAYS = ("x", "gamma", "beta", "dy", "running_mean", "running_var")
STEM_CHARS = 48  # of the backend name in the folder name; the digest keeps folders of similar names apart
MAX_CASE_JSON = 1 << 20  # bytes; a saved case.json is well under a kilobyte
MAX_ARRAY_BYTES = 1 << 30  # what inputs.npz may ask to allocate, all arrays together
DEFAULT_TIME_LIMIT = 120.0  # seconds, like `bnconf report --time-limit`
POLL_SECONDS = 0.1
PATH_CHARS = 4096  # of a path shown in a message (its unprintable characters escaped)

SCRIPT = '''"""Replays a bnconf conformance failure (needs bnconf and the backend's framework installed).

    python repro.py TARGET              run the case on the backend TARGET (module:attribute or file.py:attribute)
    python repro.py --trust-target      run it on the target case.json names: imports that code, so only for
                                        a folder you trust
    python repro.py --help              the other options (--time-limit)
"""
import sys
from pathlib import Path

from bnconf.conformance.repro import script_main

raise SystemExit(script_main(Path(__file__).parent, sys.argv[1:]))
'''


class CaseError(ValueError):
    """A folder that is not a saved case, or a saved case that cannot be read back, or one replay declines to
    run; the message is one line that names the problem and how to fix it."""


# ---------------------------------------------------------------- saving


def _safe_part(text: str, limit: int, default: str) -> str:
    """`text` as a portable file-name part: ASCII letters, digits and . _ + - only (runs of anything else
    become one "_"), no leading or trailing dot, dash or underscore (so never "." or ".."), at most `limit`
    characters."""
    part = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._-")[:limit].rstrip("._-")
    return part or default


def folder_name(backend_name: str, mode: Mode, dtype: str, digest: str) -> str:
    """The case folder's name: bounded (under 100 ASCII characters) and safe whatever the backend name holds
    (slashes, newlines, "..", any Unicode, any length); the digest of the whole case keeps it unique."""
    return "-".join((_safe_part(backend_name, STEM_CHARS, "backend"), _safe_part(mode.value, 20, "mode"),
                     _safe_part(dtype, 16, "dtype"), digest[:12]))


def _versions(backend) -> dict[str, str]:
    """The backend's versions() as text; a backend whose versions() fails still has its case saved."""
    if not callable(getattr(backend, "versions", None)):
        return {}
    try:
        return {str(k): str(v) for k, v in dict(backend.versions()).items()}
    except Exception as e:  # noqa: BLE001 - metadata only
        return {"versions()": f"raised {type(e).__name__}"}


def run_records(backend) -> list[str]:
    """The records files attached to `backend` (the run's `--records` targets, as the user named them)."""
    from .known import attached_sources

    return list(attached_sources(backend))


def save_case(root, backend, mode: Mode, inputs: Inputs, dtype: str, device: str, records=None) -> Path:
    """Write the case as `<root>/<folder_name(...)>/` and return that folder. `records`: the records targets
    the case was judged with (None: those attached to `backend`, `run_records`)."""
    from ..adapters.registry import origin

    arrays = {k: v for k, v in {"x": inputs.x, "gamma": inputs.gamma, "beta": inputs.beta, "dy": inputs.dy}.items() if v is not None}
    if inputs.running is not None:
        arrays.update(running_mean=inputs.running.mean, running_var=inputs.running.var)
    case = {
        "format": FORMAT,
        "backend": backend.name, "target": origin(backend), "mode": mode.value, "dtype": dtype, "device": device,
        "axis": int(inputs.axis), "eps": float(inputs.eps),
        "momentum": None if inputs.momentum is None else float(inputs.momentum),
        "running_count": None if inputs.running is None else int(inputs.running.count),
        "records": [str(t) for t in (run_records(backend) if records is None else records)],
        "versions": {"python": platform.python_version(), "numpy": np.__version__, **_versions(backend)},
    }
    text = json.dumps(case, indent=1, sort_keys=True)
    digest = hashlib.sha256(text.encode() + b"".join(np.asarray(a).tobytes() for a in arrays.values()))
    folder = Path(root) / folder_name(backend.name, mode, dtype, digest.hexdigest())
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "inputs.npz", **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    (folder / "case.json").write_text(text)
    (folder / "repro.py").write_text(SCRIPT)
    return folder


# ---------------------------------------------------------------- reading, defensively


@dataclass(frozen=True)
class SavedCase:
    """A saved case as read from its folder; reading it imports nothing."""

    folder: Path
    target: str | None  # where the backend was loaded from when the case was saved: data, not a command
    backend: str  # the backend's name
    mode: Mode
    inputs: Inputs
    dtype: str
    device: str
    versions: dict = field(default_factory=dict)
    records: tuple[str, ...] = ()  # the records files the run judged it with: data, not a command


AGAIN = "rerun the failing conformance test to save the case again"


def shown(text: str, limit: int = 200) -> str:
    """`text` safe to print on one terminal line: control and other unprintable characters escaped, at most
    `limit` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _corrupt(folder: Path, detail: str) -> CaseError:
    return CaseError(f"{shown(folder, PATH_CHARS)} holds a corrupt case ({detail}); {AGAIN}")


def _is_layout(name) -> bool:
    """A dtype name bnconf knows, or a mixed layout of two ("float16/float32")."""
    if not isinstance(name, str):
        return False
    try:
        dtype, param_dtype = split_layout(name)
    except ValueError:
        return False
    return dtype in FORMATS and (param_dtype is None or param_dtype in FORMATS)


def _field(case: dict, name: str, ok, expected: str, folder: Path, optional: bool = False):
    """case[name], checked with `ok`; CaseError naming the field when it is missing or not `expected`."""
    if name not in case:
        if optional:
            return None
        raise _corrupt(folder, f"case.json has no field {name!r}, {expected} expected")
    value = case[name]
    if not ok(value):
        raise _corrupt(folder, f"case.json field {name!r} must be {expected}, got {type(value).__name__} "
                               f"{shown(reprlib.repr(value), 80)}")
    return value


def _plain_line(v, limit: int) -> bool:
    """A non-empty string of printable characters (no newline, no escape sequence) of at most `limit`."""
    return isinstance(v, str) and 0 < len(v) <= limit and v.isprintable()


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _read_arrays(folder: Path) -> dict[str, np.ndarray]:
    """The arrays of inputs.npz: only known names, real floating dtypes, bounded sizes, never unpickled
    (each header is checked before any data is read, so that a forged shape allocates nothing)."""
    path, total = folder / "inputs.npz", 0
    if not path.is_file():
        raise _corrupt(folder, "FileNotFoundError: no inputs.npz there")
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
        for info in members:
            if info.filename not in {f"{k}.npy" for k in ARRAYS}:
                raise _corrupt(folder, f"inputs.npz holds an unexpected member {shown(info.filename, 80)!r}, "
                                       f"expected only {', '.join(ARRAYS)}")
        for info in members:
            key = info.filename.removesuffix(".npy")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = header(f)
            if dtype.hasobject or dtype.kind != "f":
                raise _corrupt(folder, f"inputs.npz array {key!r} must be real floating point, got dtype {dtype}")
            total += math.prod(shape) * dtype.itemsize
            if total > MAX_ARRAY_BYTES:
                raise _corrupt(folder, f"the arrays of inputs.npz would take over {MAX_ARRAY_BYTES / 2**30:g} GiB")
    with np.load(path, allow_pickle=False) as npz:
        return {k: np.asarray(npz[k], dtype=np.float64) for k in npz.files}


def read_case(folder) -> SavedCase:
    """Read a saved case without importing anything it names; CaseError (one line, naming the field or file)
    when `folder` is not a readable saved case."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(f"no folder {shown(folder, PATH_CHARS)}; give a folder a failing conformance test saved "
                        "(bnconf-repro/...)")
    if not (folder / "case.json").is_file():
        raise CaseError(f"{shown(folder, PATH_CHARS)} is not a saved case (no case.json there); give a folder a "
                        "failing conformance test saved (bnconf-repro/...)")
    try:
        if (folder / "case.json").stat().st_size > MAX_CASE_JSON:
            raise _corrupt(folder, f"case.json is over {MAX_CASE_JSON >> 10} KiB")
        case = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, CaseError):
            raise
        raise _corrupt(folder, f"{type(e).__name__} in case.json: {shown(e, 120)}") from e
    if not isinstance(case, dict):
        raise _corrupt(folder, f"case.json must hold a JSON object, got {type(case).__name__}")
    _field(case, "format", lambda v: v == FORMAT, repr(FORMAT), folder, optional=True)  # absent: saved before there was one
    target = _field(case, "target", lambda v: v is None or _plain_line(v, 4096) and ":" in v,
                    "null or a module:attribute target on one line", folder)
    name = _field(case, "backend", lambda v: isinstance(v, str) and 0 < len(v) <= 10_000, "the backend's name", folder)
    mode = Mode(_field(case, "mode", lambda v: v in {m.value for m in Mode}, f"one of {[m.value for m in Mode]}", folder))
    dtype = _field(case, "dtype", _is_layout, f"one of {list(FORMATS)} or a mixed layout such as 'float16/float32'",
                   folder)
    device = _field(case, "device", lambda v: _plain_line(v, 200), "a device name (text on one line)", folder)
    axis = _field(case, "axis", lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", folder)
    eps = _field(case, "eps", _is_number, "a number", folder)
    momentum = _field(case, "momentum", lambda v: v is None or _is_number(v), "a number or null", folder)
    count = _field(case, "running_count", lambda v: v is None or _count(v), "a count (integer >= 0) or null", folder)
    records = _field(case, "records", lambda v: isinstance(v, list) and len(v) <= 100 and all(
        isinstance(t, str) and _plain_line(t, 4096) and ":" in t for t in v),
        "a list of records targets (module:attribute on one line each)", folder, optional=True) or []
    versions = _field(case, "versions", lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                      "an object of names to version strings", folder, optional=True) or {}
    try:
        arrays = _read_arrays(folder)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        if isinstance(e, CaseError):
            raise
        raise _corrupt(folder, f"{type(e).__name__} in inputs.npz: {shown(e, 120)}") from e
    if "x" not in arrays:
        raise _corrupt(folder, "inputs.npz has no array 'x'")
    if ("running_mean" in arrays) != ("running_var" in arrays):
        raise _corrupt(folder, "inputs.npz holds only one of running_mean and running_var")
    running = None
    if "running_mean" in arrays:
        if count is None:
            raise _corrupt(folder, "case.json field 'running_count' must be a count when inputs.npz holds running "
                                   "statistics")
        running = RunningStats(arrays["running_mean"], arrays["running_var"], count)
    inputs = Inputs(x=arrays["x"], axis=axis, eps=float(eps), gamma=arrays.get("gamma"), beta=arrays.get("beta"),
                    running=running, momentum=None if momentum is None else float(momentum), dy=arrays.get("dy"))
    return SavedCase(folder, target, name, mode, inputs, dtype, device, versions, tuple(records))


def select_backend(backends: list, case: SavedCase, target: str, exact: bool):
    """The backend of `target` with the saved name; when `target` is the user's own (not `exact`) and holds
    one backend, that one (the user's fixed or renamed version of it). CaseError otherwise."""
    named = [b for b in backends if b.name == case.backend]
    if named:
        return named[0]
    name = shown(case.backend, 100)
    if exact:
        raise CaseError(f"{target} no longer provides a backend named {name!r}; replay with the version that saved it "
                        f"({case.versions}), name a backend with --backend, or {AGAIN}")
    if len(backends) == 1:
        return backends[0]
    raise CaseError(f"{target} provides {len(backends)} backends and none is named {name!r} (there: "
                    f"{', '.join(shown(b.name, 60) for b in backends)}); name a target that holds that one backend")


def load_case(folder, backend_target: str | None = None, *, trust_folder_target: bool = False):
    """(backend, mode, inputs, dtype, device) of a saved case, in this process, on the backend `backend_target`
    names. The target the folder names is imported only with `trust_folder_target=True` (that runs its code:
    only for a folder you trust); with neither, CaseError. No records file is loaded (`replay` attaches them)."""
    from ..adapters.registry import load

    case = read_case(folder)
    if backend_target is None and not trust_folder_target:
        raise CaseError(f"load_case does not import the target {shown(folder, PATH_CHARS)} names without your "
                        "consent; give backend_target, or trust_folder_target=True for a folder you trust")
    target = backend_target or case.target
    if target is None:
        raise CaseError(f"{shown(case.folder, PATH_CHARS)} does not say where backend {shown(case.backend, 100)!r} "
                        "comes from (no target); name the backend's target")
    backend = select_backend(load(target), case, target, exact=backend_target is None)
    return backend, case.mode, case.inputs, case.dtype, case.device


# ---------------------------------------------------------------- replaying


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _ask(question: str) -> bool:
    """Yes/no on the terminal, default no; False without asking when stdin is not a terminal."""
    if not _stdin_is_tty():
        return False
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def trust_command(folder, target: str, records=()) -> str:
    """The command that replays `folder` on `target`, judged with the records files `records`."""
    return (f"bnconf replay {shlex.quote(shown(folder, PATH_CHARS))} --backend {shlex.quote(target)}"
            + "".join(f" --records {shlex.quote(t)}" for t in records))


def replay_line(folder, backend, records=None) -> str:
    """The one line that reruns the case saved in `folder` on `backend` (the target it was loaded from;
    TARGET, to be filled in, for a backend built in this process), with the records files the case was judged
    with (None: those attached to `backend`, as `save_case` stores them)."""
    from ..adapters.registry import origin

    return trust_command(folder, origin(backend) or "TARGET", run_records(backend) if records is None else records)


def _choose_target(case: SavedCase, backend_target: str | None, trust_folder_target: bool) -> str:
    if backend_target is not None:
        if not isinstance(backend_target, str) or not backend_target.strip():
            raise InputError(f"backend_target: expected a TARGET (module:attribute or path/to/file.py:attribute), "
                             f"got {backend_target!r}")
        return backend_target
    name, folder = shown(case.backend, 100), shown(case.folder, PATH_CHARS)
    if case.target is None:
        raise CaseError(f"{folder} does not say where backend {name!r} comes from (no target); replay it with "
                        "--backend TARGET naming that backend")
    if trust_folder_target:
        return case.target
    if _ask(f"{folder} was saved from backend {name!r} of target {case.target}; replaying it on that target imports "
            "and runs that code. Run it? [y/N] "):
        return case.target
    raise CaseError(f"{folder} names backend {name!r} from target {case.target}, which replay does not import without "
                    f"your consent (it runs that code); if you trust it, run: "
                    f"{trust_command(case.folder, case.target, case.records)}")


def _choose_records(case: SavedCase, records, trust_folder_target: bool) -> tuple[str, ...]:
    """The records files to judge with: the user's (`records`, no consent needed), else the folder's own only
    with `trust_folder_target`; a note on stdout when the folder names records that are not loaded."""
    if records is None or isinstance(records, str) or not all(isinstance(t, str) and t.strip() for t in records):
        raise InputError(f"records: expected a list of records targets (path/to/records.py:ATTR or module:attr), "
                         f"got {records!r}")
    if records:
        return tuple(records)
    if trust_folder_target or not case.records:
        return case.records
    print(f"note: the case was judged with records files it names ({', '.join(shown(t, 300) for t in case.records)}), "
          "not loaded here (that imports their code); judging without them. To judge with them, add "
          + " ".join(f"--records {shlex.quote(t)}" for t in case.records))
    return ()


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child's whole session (its own children too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"crashed with {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed with signal {-code}"
    return f"exited with code {code} unfinished"


def _last_line(log) -> str:
    log.seek(0)
    lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
    fatal = [ln for ln in lines if ln.startswith("Fatal Python error")]
    return shown((fatal or lines or [""])[-1], 300)


def _bad_input(kind: str, message: str) -> Exception:
    from ..adapters.protocol import BackendError
    from ..adapters.registry import TargetError
    from .user_records import RecordsError

    return {"TargetError": TargetError, "BackendError": BackendError, "RecordsError": RecordsError}.get(
        kind, CaseError)(message)


class _CtrlC:
    """The SIGINT handler of a replay: the first Ctrl-C raises KeyboardInterrupt, later ones (while the child is
    being stopped) change nothing; one that comes while `held` is raised when that ends."""

    def __init__(self):
        self.caught = self.holding = self.pending = False

    def __call__(self, signum, frame):
        if self.caught:
            return
        self.caught = True
        if self.holding:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending:
                raise KeyboardInterrupt


def _run_in_child(case: SavedCase, target: str, time_limit: float, exact: bool, records=(),
                  ctrl_c: _CtrlC | None = None) -> int:
    """Run the case in a child on `target`'s backend (`select_backend`), print what it sends; the replay's
    exit status. A Ctrl-C (`ctrl_c`, the replay's handler) while the child starts is held until Popen has
    named it, so that it is stopped and reaped."""
    from .user_records import _where

    ctrl_c = ctrl_c or _CtrlC()

    label = f"{shown(case.backend, 100)} {case.device} {case.dtype} {case.mode.value}"
    with tempfile.TemporaryFile() as log:
        read, write = os.pipe()
        pipe = os.fdopen(read, "rb", buffering=0)
        selector = selectors.DefaultSelector()
        proc = None
        try:
            try:
                with ctrl_c.held():  # raised inside Popen, it would leave the child running unnamed
                    proc = subprocess.Popen([sys.executable, "-m", "bnconf.conformance.replay_worker", str(write)],
                                            stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(write,),
                                            start_new_session=True)  # Ctrl-C reaches only this process: it stops it
            finally:
                os.close(write)
            try:
                job = {"folder": str(case.folder.resolve()), "target": target, "exact": exact,
                       "records": [[_where(t), t] for t in records]}  # loadable from the child's directory
                proc.stdin.write(json.dumps(job).encode())
                proc.stdin.close()
            except BrokenPipeError:  # the child is gone already: the pipe says so below
                pass
            selector.register(pipe, selectors.EVENT_READ)
            phase, started, buffer = f"loading {target}", time.monotonic(), b""
            while True:
                left = time_limit - (time.monotonic() - started)
                if left <= 0:
                    _kill(proc)
                    print(f"{label}: timed out: no result within {time_limit:g} s while {phase}; stopped it")
                    return 1
                chunk = pipe.read(1 << 16) if selector.select(min(POLL_SECONDS, left)) else None
                if chunk == b"":  # the child closed the pipe without a result
                    try:
                        code = proc.wait(timeout=max(1.0, time_limit - (time.monotonic() - started)))
                    except subprocess.TimeoutExpired:
                        _kill(proc)
                        code = None
                    if code is None:
                        print(f"{label}: timed out: no result within {time_limit:g} s while {phase}; stopped it")
                    else:
                        last = _last_line(log)
                        print(f"{label}: the backend {_exit_reason(code)} while {phase}" + (f" ({last})" if last else ""))
                    return 1
                if not chunk:
                    continue
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for e in (json.loads(line) for line in lines if line.strip()):
                    if e["event"] == "bad_input":
                        raise _bad_input(e["kind"], e["message"])
                    if e["event"] == "loaded":
                        phase, started = "running the case", time.monotonic()
                        if e["name"] != case.backend:
                            print(f"replaying the case of {shown(case.backend, 100)!r} on backend "
                                  f"{shown(e['name'], 100)!r} of {target}")
                    elif e["event"] == "line":
                        print(e["text"])
                    elif e["event"] == "raised":
                        print(f"{label}: {e['where']} {shown(e['error'], 500)}")
                        return 1
                    elif e["event"] == "result":
                        return e["code"]
        finally:
            selector.close()
            pipe.close()
            if proc is not None:
                _kill(proc)


def replay(folder, backend_target: str | None, time_limit: float, trust_folder_target: bool = False,
           records=()) -> int:
    """Rerun a saved case and print every quantity's comparison: 0 when it conforms now, 1 when a quantity
    still fails or the backend raised, crashed or ran past `time_limit` seconds (loading it and running the
    case each get that long), 130 when interrupted (Ctrl-C: one line on stderr).

    The backend is the one `backend_target` names (a TARGET, module:attribute or path/to/file.py:attribute;
    the backend of the saved name there, or its only one). With None, the target the folder names is run only
    with `trust_folder_target`, or when the user answers "y" on a terminal; otherwise CaseError says which
    target the folder names and the command that runs it. `records` (records targets the user names) are
    attached to the backend before judging; with none, the records files case.json names are attached only
    with `trust_folder_target` (otherwise a note names them). Raises CaseError for a folder that is not a
    readable saved case, TargetError/BackendError for a target that does not load, RecordsError for records
    that do not load or hold, InputError for a bad `time_limit` or `records`."""
    if not _is_number(time_limit) or not time_limit > 0 or not math.isfinite(time_limit):
        raise InputError(f"time_limit: expected a number of seconds > 0, got {time_limit!r}")
    ctrl_c = _CtrlC()
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # started with Ctrl-C ignored (a background job of a script): keep it so
        previous = None
    else:
        try:
            signal.signal(signal.SIGINT, ctrl_c)
        except ValueError:  # not the main thread: Ctrl-C is not delivered here anyway
            previous = None
    try:
        case = read_case(folder)
        target = _choose_target(case, backend_target, trust_folder_target)
        chosen = _choose_records(case, records, trust_folder_target)
        return _run_in_child(case, target, float(time_limit), exact=backend_target is None, records=chosen,
                             ctrl_c=ctrl_c)
    except KeyboardInterrupt:
        print("bnconf replay: interrupted; the case was not finished", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def print_replay(folder, backend_target: str | None = None, time_limit: float = DEFAULT_TIME_LIMIT,
                 trust_folder_target: bool = False, records=()) -> int:
    """`replay` for scripts: bad input is one line on stderr and exit status 2 instead of an exception."""
    from ..adapters.protocol import BackendError
    from ..adapters.registry import TargetError
    from .user_records import RecordsError

    try:
        return replay(folder, backend_target, time_limit, trust_folder_target, records)
    except (CaseError, TargetError, BackendError, InputError, RecordsError) as e:
        print(f"bnconf replay: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def script_main(folder, argv: list[str]) -> int:
    """The command line of a case folder's repro.py."""
    import argparse

    parser = argparse.ArgumentParser(prog="repro.py", description="Replay this bnconf case.")
    parser.add_argument("target", nargs="?", metavar="TARGET",
                        help="the backend to run it on: module:attribute or path/to/file.py:attribute")
    parser.add_argument("--trust-target", action="store_true",
                        help="run it on the target case.json names (imports that code: only for a folder you trust)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                        help=f"stop the backend after this long (default {DEFAULT_TIME_LIMIT:g})")
    parser.add_argument("--records", action="append", default=[], metavar="FILE.py:ATTR",
                        help="judge with these records files (repeatable; default: none, or with --trust-target "
                             "those case.json names)")
    args = parser.parse_args(argv)
    return print_replay(folder, args.target, args.time_limit, args.trust_target, args.records)


WORST_ELEMENTS = 5  # rows of the observed-against-expected table of a failing quantity


@np.errstate(all="ignore")  # NaN and Inf are what such a table shows
def worst_elements(backend, mode: Mode, a, dtype: str, device: str, quantity: str,
                   count: int = WORST_ELEMENTS) -> list[tuple]:
    """The `count` worst elements of `quantity` in the assessment `a` of a case on `backend`, worst first:
    (index, observed, expected, bound, error/bound). Expected is the oracle's value in the quantity's format
    under the model it was judged by (the declared convention, or the known discrepancy's recorded behaviour
    where one covers the quantity, its unchecked channels making no claim: no bound, ranked with the
    ill-conditioned); elements whose finiteness differs from the oracle's rank first (error/bound
    inf), elements without a bound (ill-conditioned) last (error/bound nan)."""
    from ..adapters.protocol import declared_precision
    from ..spec.verdict import expected_in_format, quantity_format
    from .records import RecordedCase

    if a.inputs is None or a.observed.get(quantity) is None:
        return []
    inputs, convention, precision = a.inputs, backend.convention, declared_precision(backend, dtype, device)
    if a.discrepancy is not None and quantity in a.discrepancy.quantities and a.recorded:
        case = a.discrepancy.apply(inputs, a.observed, convention, precision)  # unchecked channels: no claim
    else:
        case = RecordedCase.declared(inputs, a.observed, convention, precision)
    exp = case.expected(mode).get(quantity)
    observed = np.asarray(a.observed[quantity], dtype=np.float64)
    if exp is None or observed.shape != exp.value.shape:
        return []
    value = expected_in_format(observed, exp, quantity_format(quantity, precision))
    finite = np.isfinite(observed) & np.isfinite(value)
    same = (np.isnan(observed) & np.isnan(value)) | (observed == value)
    error = np.abs(observed - value)
    ratio = np.where(same, 0.0, np.where(finite, np.where(exp.ill, np.nan, error / exp.bound), np.inf))
    rank = np.where(np.isnan(ratio), -1.0, ratio).ravel()  # unbounded elements last
    order = np.argsort(-rank, kind="stable")[:count]
    out = []
    for flat in order:
        at = np.unravel_index(int(flat), observed.shape)
        out.append((tuple(int(i) for i in at), float(observed[at]), float(value[at]), float(exp.bound[at]),
                    float(ratio[at])))
    return out


def _element_lines(rows: list[tuple]) -> list[str]:
    if not rows:
        return []
    table = [("index", "observed", "expected", "bound", "error/bound")]
    table += [(str(at), repr(obs), repr(exp), f"{bound:.3g}", f"{r:.3g}") for at, obs, exp, bound, r in rows]
    widths = [max(len(row[k]) for row in table) for k in range(5)]
    return ["    " + "  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths)))
            for row in table]


def assessment_lines(name: str, mode: Mode, dtype: str, device: str, a, backend=None) -> tuple[list[str], int]:
    """What replay prints for the assessment `a` of backend `name`'s case, and its exit status: every
    quantity's comparison and, for each failing one when `backend` is given, observed against expected at its
    worst elements (`worst_elements`)."""
    lines = [f"{shown(name, 100)} {device} {dtype} {mode.value}"]
    problems = a.problems()
    if a.wrote_into:
        lines.append(f"  {shown(a.wrote_into, 300)}")  # "the backend wrote into its input x (...)"
    for q, c in a.declared.items():
        judged = problems.get(q, c)
        lines.append(f"  {q}: {judged.verdict.value}{' ' + judged.detail if judged.detail else ''}; max error/bound "
                     f"{judged.max_ratio:.3g}, "
                     f"{'no ULP figure' if judged.max_ulp is None else f'{judged.max_ulp:.3g} ulps'}, "
                     f"worst at {judged.worst_index}: observed "
                     f"{judged.observed!r}, expected {judged.expected!r}, bound {judged.bound!r}")
        if q in problems and backend is not None:
            lines += _element_lines(worst_elements(backend, mode, a, dtype, device, q))
    if a.discrepancy:
        lines.append(f"  covered by known discrepancy {a.discrepancy.id}")
    failing = list(problems) + (["it writes into its inputs"] if a.wrote_into else [])
    lines.append("still fails: " + ", ".join(failing) if failing else "conforms now")
    return lines, 1 if failing else 0
