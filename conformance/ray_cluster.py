"""Units of work as Ray tasks: `bnconf report --ray auto|ADDRESS` (the bnconf[ray] extra).

A unit (one backend's cells on one device with its edge cases, or a batch of cross-framework pairs: one
job dict of conformance/isolation.py) runs as a Ray streaming-generator task. On the node the task runs
`isolation._supervise` itself, so the worker process, its time limit and its memory limit are the same
as in a local run; it streams the worker's events back in batches (one at least every HEARTBEAT_SECONDS).
The driver side (`RaySupervisor.supervise`, the contract of `isolation._supervise`) hands each event to
the run's partial-report machinery as it arrives and re-materializes, in the driver's folders, every
case folder the node saved:

    the case being run         each "case" event carries its folder's files, so that when the node dies
                               the driver still writes the replayable folder under its crash folder
    a failing cell's case      the node saves it in a scratch folder; the event that names it carries
                               its files, written under the run's cases folder, the path rewritten
    a crash on the node        (isolation's crashed / timed out / out of memory) its kept folder too

What a task asks of the cluster: 1 CPU; 1 GPU when its device is cuda or gpu; and when any live node
advertises a `bnconf_*` resource, `bnconf_<family>` (adapters/families.py) for each built-in backend it
loads (a node that has that framework: `ray start --resources '{"bnconf_torch": 1}'`); a backend outside
the built-in families asks for `bnconf_<its name>` only when some node advertises that. Each label is
asked for in a small fraction (LABEL_SHARE), so a node advertising 1 runs as many units as its CPUs.

Never a hung run: a unit no live node can take returns at once (NOT_RUN, one line); one that no node
starts while the run makes no progress for `start_timeout` seconds returns NOT_RUN; a node that dies, a
Ray worker that dies, a node silent for `silence_timeout` seconds: CRASHED with the input it was running
(`isolation.run_isolated` then runs the unit's remaining cells in a fresh task: that is the retry).
Ray tasks are never retried by Ray itself (their events would arrive twice); Ray's own scheduler is the
only queue.

Importing this module imports no Ray: `connect` does, and says how to install it when it is missing.
"""

import logging
import os
import queue
import re
import shlex
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .status import CellStatus

TCP_SECONDS = 3.0  # the reachability pre-check of HOST:PORT
CONNECT_SECONDS = 30.0  # ray.init, which can wait minutes on a port that is open but not Ray's
POLL_SECONDS = 0.05  # as isolation.POLL_SECONDS: the driver's on_idle cadence
HEARTBEAT_SECONDS = 1.0  # the node sends a (possibly empty) batch at least this often
RECHECK_SECONDS = 5.0  # while a unit waits to start: is some live node still able to take it?
LABEL_SHARE = 0.01  # of a `bnconf_*` resource per unit
START_SECONDS = 600.0
SILENCE_SECONDS = 300.0
CANCEL_JOIN_SECONDS = 10.0  # on the node: how long a cancelled task waits for its worker to be stopped
LABEL = "bnconf_"
SCRATCH = "bnconf-ray-"  # a task's scratch folder on its node: <tmp>/bnconf-ray-<Ray worker pid>-<random>


class ClusterError(ValueError):
    """The Ray cluster cannot be used (not installed, a malformed or unreachable address): one line with the fix."""


# ---------------------------------------------------------------- what a unit needs


def _family_of(backend_name: str) -> str | None:
    from ..adapters.families import FAMILIES

    return next((f.name for f in FAMILIES if backend_name in f.backend_names), None)


def backend_names(job: dict) -> list[str]:
    """The backends a job loads: its backend (battery) or the backends of its pairs (matrix)."""
    if job.get("kind") == "matrix":
        return [name for _target, name in job.get("backends", ())]
    return [job["backend"]] if job.get("backend") else []


def on_gpu(device: str | None) -> bool:
    return str(device or "").split(":")[0].lower() in ("cuda", "gpu")


def needs(job: dict, offered: list[dict]) -> dict[str, float]:
    """The Ray resources the unit `job` asks for, given the live nodes' resources `offered` (see the module
    docstring): CPU, GPU and `bnconf_*` labels."""
    advertised = {key for node in offered for key in node}
    labelled = any(key.startswith(LABEL) for key in advertised)
    out = {"CPU": 1.0}
    if on_gpu(job.get("device")):
        out["GPU"] = 1.0
    for name in backend_names(job):
        family = _family_of(name)
        label = LABEL + (family or name)
        if (family and labelled) or label in advertised:
            out[label] = LABEL_SHARE
    return out


def feasible(request: dict[str, float], offered: list[dict]) -> bool:
    """Whether some live node has (in total, busy or not) every resource of `request`."""
    return any(all(node.get(key, 0) >= amount for key, amount in request.items()) for node in offered)


def _unschedulable(request: dict[str, float], offered: list[dict], address: str) -> str:
    labels = {k: 1 for k in request if k.startswith(LABEL)}
    start = "ray start --address " + shlex.quote(address)
    if "GPU" in request:
        start += " --num-gpus 1"
    if labels:
        start += " --resources " + shlex.quote(str(labels).replace("'", '"'))
    if not offered:
        problem = "the Ray cluster has no live node"
    else:
        problem = f"no live node of the Ray cluster ({len(offered)} node(s)) has " + ", ".join(
            f"{k} {v:g}" if k in ("CPU", "GPU") else k for k, v in request.items())
    return f"{problem}; start one that does, on a machine with the backend's framework installed: {start}"


# ---------------------------------------------------------------- on the node


class _Cancelled(Exception):
    """Raised in the node's supervising thread when its task is cancelled: isolation stops its worker."""


def _read_folder(folder: Path) -> dict[str, bytes] | None:
    """The plain files of a case folder (flat: case.json, inputs.npz, repro.py); None when it is gone."""
    try:
        return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    except OSError:
        return None


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _remove_stale_scratch() -> None:
    """Remove the scratch folders of tasks whose Ray worker was killed (a force-cancelled task, a node that
    died and came back): `<tmp>/bnconf-ray-<pid>-*` of a pid that no longer runs."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*-*"):
        pid = folder.name[len(SCRATCH):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # alive (another user's): not ours to judge


@contextmanager
def _temp_root(folder: str):
    """Temporary files of this task (isolation's worker scratch) inside `folder`, so that one removal takes
    them all; a Ray worker runs one task at a time, and the previous root comes back afterwards."""
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before


def unit_on_node(job: dict, limits, heartbeat: float = HEARTBEAT_SECONDS):
    """The Ray task (a streaming generator): run `job` under `isolation._supervise` on this node, yielding
    {"started": {...}} then {"batch": [...]} at least every `heartbeat` seconds, the last batch ending with
    ("end", None | (kind, reason, case, kept files)) or ("error", text)."""
    import ray

    from .isolation import _supervise

    out: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    _remove_stale_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{os.getpid()}-") as tmp, _temp_root(tmp):
        root = Path(tmp)
        crashes, cases = root / "crashes", root / "cases"
        job = dict(job)
        if job.get("cases_dir") is not None:
            job["cases_dir"] = str(cases)  # written here, shipped with the event that names them
        shipped: set[str] = set()
        saved_in = re.compile(re.escape(str(cases)) + r"/([^/\s'\"]+)")

        def handle(e: dict) -> None:
            if stop.is_set():
                raise _Cancelled
            if e.get("event") == "case" and e.get("folder"):
                e = {**e, "files": _read_folder(Path(e["folder"]))}
            names = {m for s in _strings(e) for m in saved_in.findall(s)} - shipped
            saved = {n: f for n in sorted(names) if (f := _read_folder(cases / n)) is not None}
            shipped.update(saved)
            out.put(("event", {**e, "saved": saved} if saved else e))

        def idle() -> None:
            if stop.is_set():
                raise _Cancelled

        def work() -> None:
            try:
                failure = _supervise(job, limits, crashes, handle, idle)
                if failure is None:
                    out.put(("end", None))
                    return
                kind, reason, case = failure
                kept = crashes / Path(case["folder"]).name if case and case.get("folder") else None
                files = _read_folder(kept) if kept else None
                case = case and {k: v for k, v in case.items() if k != "files"}
                out.put(("end", (kind, reason, case, {"path": str(kept), "files": files} if files else None)))
            except _Cancelled:
                out.put(("error", "cancelled"))
            except BaseException as e:  # noqa: BLE001 - bnconf itself failing on the node: the driver is told
                out.put(("error", f"{type(e).__name__}: {e}"))

        yield {"started": {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "cases": str(cases)}}
        thread = threading.Thread(target=work, name="bnconf-ray-unit", daemon=True)
        thread.start()
        try:
            while True:
                batch = []
                try:
                    batch.append(out.get(timeout=heartbeat))
                    while True:
                        batch.append(out.get_nowait())
                except queue.Empty:
                    pass
                last_case = max((i for i, (tag, e) in enumerate(batch) if tag == "event" and e.get("event") == "case"),
                                default=None)
                batch = [(tag, {k: v for k, v in e.items() if k != "files"})  # only the latest case's files matter
                         if tag == "event" and "files" in e and i != last_case else (tag, e)
                         for i, (tag, e) in enumerate(batch)]
                yield {"batch": batch}
                if any(tag in ("end", "error") for tag, _ in batch):
                    return
        finally:
            stop.set()  # cancelled (or done): the supervising thread stops its worker
            thread.join(CANCEL_JOIN_SECONDS)


# ---------------------------------------------------------------- the driver


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if Path(name).name != name or name in (".", ".."):
            continue  # a flat case folder: nothing else is written
        (folder / name).write_bytes(data)


def _rewrite(value, swaps: list[tuple[str, str]]):
    """`value` (an event) with every node path in `swaps` replaced by the driver's."""
    if isinstance(value, str):
        for old, new in swaps:
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _rewrite(v, swaps) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, swaps) for v in value]
    return value


def _swaps(node_path: str, local_path: Path) -> list[tuple[str, str]]:
    """How a node path shows in an event (quoted in a replay line, bare elsewhere) and what replaces it."""
    from .repro import PATH_CHARS, shown

    return [(shlex.quote(shown(node_path, PATH_CHARS)), shlex.quote(shown(str(local_path), PATH_CHARS))),
            (shlex.quote(node_path), shlex.quote(str(local_path))), (node_path, str(local_path))]


@dataclass
class _Attempt:
    """What the driver knows of one task: where it runs, the case it is running (with its files)."""

    job: dict
    crash_dir: Path
    node: str | None = None  # "host (ip)" once started
    case: dict | None = None
    case_files: dict | None = None
    done: int = 0
    node_cases: str = ""  # the node's scratch folder for the run's saved cases
    over: bool = False  # the task has ended (its last batch arrived, or Ray said it failed)
    stuck: bool = False  # the node stopped answering: its worker is killed, not asked to stop
    swaps: list = field(default_factory=list)  # (node path, driver path) of every case folder shipped back

    def failure(self, kind: CellStatus, what: str) -> tuple[CellStatus, str, dict | None]:
        """(kind, reason, case) naming the input it was running, its folder written under crash_dir."""
        from .isolation import _failure

        case = self.case
        if case is None or not self.case_files or not case.get("folder"):
            return kind, _failure(what, case and {k: v for k, v in case.items() if k != "folder"}, self.crash_dir,
                                  self.done, self.job.get("target")), case
        with tempfile.TemporaryDirectory(prefix="bnconf-ray-case-") as tmp:
            local = Path(tmp) / Path(case["folder"]).name
            _write_folder(local, self.case_files)
            reason = _failure(what, {**case, "folder": str(local)}, self.crash_dir, self.done, self.job.get("target"))
        return kind, reason, {**case, "folder": str(self.crash_dir / local.name)}


class RaySupervisor:
    """Runs units of work on the Ray cluster this process is connected to (`connect`)."""

    def __init__(self, address: str, owns: bool, start_timeout: float = START_SECONDS,
                 silence_timeout: float = SILENCE_SECONDS):
        import ray

        self.address, self._owns = address, owns
        self.start_timeout, self.silence_timeout = start_timeout, silence_timeout
        self._task = ray.remote(num_returns="streaming", max_retries=0, retry_exceptions=False)(unit_on_node)
        self._progress = time.monotonic()  # when a unit of this run last started or ended

    @property
    def slots(self) -> int:
        """How many units to run at once: the live nodes' CPUs."""
        return max(1, int(sum(node.get("CPU", 0) for node in self.offered())))

    @staticmethod
    def offered() -> list[dict]:
        """Each live node's resources (totals, busy or not)."""
        import ray

        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]

    def close(self) -> None:
        import ray

        if self._owns and ray.is_initialized():
            ray.shutdown()

    def supervise(self, job: dict, limits, crash_dir, handle, on_idle=None) -> tuple | None:
        """`isolation._supervise`'s contract, the unit running as a Ray task (see the module docstring)."""
        import ray

        crash_dir = Path(crash_dir)
        offered = self.offered()
        request = needs(job, offered)
        if not feasible(request, offered):
            return CellStatus.NOT_RUN, _unschedulable(request, offered, self.address), None
        resources = {k: v for k, v in request.items() if k not in ("CPU", "GPU")}
        gen = self._task.options(num_cpus=request["CPU"], num_gpus=request.get("GPU", 0),
                                 resources=resources).remote(job, limits, HEARTBEAT_SECONDS)
        attempt = _Attempt(job, crash_dir)
        try:
            return self._follow(gen, attempt, request, handle, on_idle)
        finally:
            self._progress = time.monotonic()
            if not attempt.over:  # stopped (Ctrl-C), never started, or silent: not left to run unread
                try:
                    ray.cancel(gen, force=attempt.stuck)
                except Exception:  # noqa: BLE001 - already finished, or the cluster is gone
                    pass

    def _follow(self, gen, attempt: _Attempt, request: dict, handle, on_idle):
        import ray

        submitted = last = checked = time.monotonic()
        while True:
            try:
                ready, _ = ray.wait([gen], timeout=POLL_SECONDS)
            except Exception as e:  # noqa: BLE001 - the driver lost the cluster
                return attempt.failure(CellStatus.CRASHED, f"the Ray cluster was lost ({_first_line(e)})")
            now = time.monotonic()
            if not ready:
                if on_idle:
                    on_idle()
                if attempt.node is None:
                    if now - max(submitted, self._progress) > self.start_timeout:
                        return CellStatus.NOT_RUN, (
                            f"no Ray node started it within {self.start_timeout:g} s while this run made no progress "
                            f"(it asks for {_shown_request(request)}); check the cluster (`ray status`)"), None
                    if now - checked > RECHECK_SECONDS:
                        checked = now
                        offered = self.offered()
                        if not feasible(request, offered):
                            return CellStatus.NOT_RUN, _unschedulable(request, offered, self.address), None
                elif now - last > self.silence_timeout:
                    attempt.stuck = True
                    return attempt.failure(CellStatus.CRASHED, f"the Ray node running it ({attempt.node}) sent nothing "
                                                               f"for {self.silence_timeout:g} s")
                continue
            last = now
            try:
                item = ray.get(next(gen), timeout=self.silence_timeout)
            except StopIteration:
                attempt.over = True
                return attempt.failure(CellStatus.CRASHED, f"the Ray task on {attempt.node} ended without a result")
            except Exception as e:  # noqa: BLE001 - a node, a worker or an object lost: this attempt's failure
                attempt.over = not isinstance(e, ray.exceptions.GetTimeoutError)
                return attempt.failure(CellStatus.CRASHED, _lost(e, attempt.node))
            if "started" in item:
                info = item["started"]
                attempt.node = f"{info['host']} ({info['ip']})"
                self._progress = now
                attempt.node_cases = info["cases"]
                continue
            attempt.over = any(tag in ("end", "error") for tag, _ in item["batch"])
            for tag, payload in item["batch"]:
                if tag == "event":
                    self._event(payload, attempt, handle)
                elif tag == "end":
                    return self._end(payload, attempt)
                else:
                    what = f"bnconf failed on the Ray node {attempt.node}: {payload}"
                    return attempt.failure(CellStatus.CRASHED, what)

    def _event(self, e: dict, attempt: _Attempt, handle) -> None:
        files, saved = e.pop("files", None), e.pop("saved", None)
        cases_dir = attempt.job.get("cases_dir")
        for name, content in (saved or {}).items():
            if cases_dir is None or Path(name).name != name:
                continue
            _write_folder(Path(cases_dir) / name, content)
            attempt.swaps += _swaps(f"{attempt.node_cases}/{name}", Path(cases_dir) / name)
        if attempt.swaps:
            e = _rewrite(e, attempt.swaps)
        if e.get("event") == "case":
            attempt.case, attempt.case_files = e, files
        else:
            attempt.case, attempt.case_files, attempt.done = None, None, attempt.done + 1
        handle(e)

    def _end(self, payload, attempt: _Attempt):
        if payload is None:
            return None
        kind, reason, case, kept = payload
        if kept:
            local = attempt.crash_dir / Path(kept["path"]).name
            _write_folder(local, kept["files"])
            reason = _rewrite(reason, _swaps(kept["path"], local))
            case = {**case, "folder": str(local)}
        return kind, reason, case


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _lost(e: BaseException, node: str | None) -> str:
    """A Ray failure of the task, in one line."""
    import ray.exceptions as rex

    where = f" ({node})" if node else ""
    if isinstance(e, rex.NodeDiedError):
        return f"the Ray node running it{where} died"
    if isinstance(e, rex.WorkerCrashedError):
        return f"the Ray worker running it{where} died"
    if isinstance(e, rex.TaskCancelledError):
        return f"its Ray task{where} was cancelled"
    if isinstance(e, rex.ObjectLostError):
        return f"its results on the Ray node{where} were lost (the node died?)"
    if isinstance(e, rex.GetTimeoutError):
        return f"the Ray node running it{where} did not deliver its results"
    if isinstance(e, rex.RayTaskError):
        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
        return f"the Ray task failed{where}: {_first_line(cause)}"
    return f"the Ray task failed{where}: {_first_line(e)}"


def _shown_request(request: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in request.items())


# ---------------------------------------------------------------- connecting


class _Quiet(logging.Filter):
    """Drops Ray's log records that start with `prefix` (said about a choice bnconf makes on purpose)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"--ray {address!r}: expected auto or HOST:PORT; give the address "
                           "`ray start --head` printed, e.g. --ray 10.0.0.5:6379")
    return host, int(port)


def _reachable(address: str, host: str, port: int, seconds: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return
    except OSError as e:
        why = "timed out" if isinstance(e, (TimeoutError, socket.timeout)) else (e.strerror or str(e))
        raise ClusterError(f"--ray {address}: cannot reach the Ray cluster at {host}:{port} ({why}); start it there "
                           f"with `ray start --head --port {port}`, or check the address and firewall") from None


def connect(address: str, *, connect_timeout: float = CONNECT_SECONDS, start_timeout: float = START_SECONDS,
            silence_timeout: float = SILENCE_SECONDS) -> RaySupervisor:
    """Connect this process to the Ray cluster at `address` ("auto" or the GCS address "HOST:PORT") and
    return the supervisor that runs units there; ClusterError (one line with the fix) when Ray is missing,
    the address is malformed or unreachable, or Ray does not answer within `connect_timeout` seconds."""
    address = str(address).strip()
    try:
        import ray
    except ImportError:
        raise ClusterError("--ray needs Ray, which is not installed in this Python; "
                           "pip install 'bnconf[ray]'") from None
    client = address if address != "auto" else os.environ.get("RAY_ADDRESS", "")
    if client.startswith("ray://"):  # Ray Client: "Streaming ... not currently supported when using Ray Client"
        where = f"RAY_ADDRESS is {client}, " if address == "auto" else ""
        raise ClusterError(f"--ray {address}: {where}a Ray Client address, which cannot stream results back (Ray "
                           "does not support streaming tasks through Ray Client); run bnconf on a machine of the "
                           "cluster with --ray auto, or give the cluster's GCS address HOST:PORT (port 6379 unless "
                           "`ray start --head --port` chose another)")
    if address != "auto":
        host, port = _host_port(address)
        _reachable(address, host, port, TCP_SECONDS)
    if ray.is_initialized():  # already connected (an embedding program): use that connection, leave it open
        return RaySupervisor(address, owns=False, start_timeout=start_timeout, silence_timeout=silence_timeout)
    box: dict = {}

    def init() -> None:
        # in a thread: bounded by connect_timeout, and Ray leaves the SIGTERM handler (the run's) alone
        quiet = _Quiet("SIGTERM handler is not set")
        logging.getLogger("ray._private.worker").addFilter(quiet)
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, namespace="bnconf")
            box["ok"] = True
        except BaseException as e:  # noqa: BLE001 - said in one line below (ray.init may also SystemExit)
            box["error"] = e
        finally:
            logging.getLogger("ray._private.worker").removeFilter(quiet)

    thread = threading.Thread(target=init, name="bnconf-ray-connect", daemon=True)
    thread.start()
    thread.join(connect_timeout)
    if "ok" in box:
        return RaySupervisor(address, owns=True, start_timeout=start_timeout, silence_timeout=silence_timeout)
    if "error" not in box:
        raise ClusterError(f"--ray {address}: no Ray cluster answered there within {connect_timeout:g} s; give the "
                           "GCS address that `ray start --head` printed (port 6379 by default)")
    error = box["error"]
    if address == "auto" and isinstance(error, ConnectionError):
        env = "set" if os.environ.get("RAY_ADDRESS") else "unset"
        raise ClusterError(f"--ray auto: no running Ray cluster found from this machine (RAY_ADDRESS is {env}); start "
                           "one with `ray start --head`, or pass --ray HOST:PORT")
    raise ClusterError(f"--ray {address}: Ray could not connect ({_first_line(error)}); check the address, and that "
                       "the cluster runs the same Ray and Python versions as this machine")
