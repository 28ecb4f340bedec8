"""Each backend's battery in its own child process, with a time limit and a memory limit.

A buggy kernel can segfault, a framework can hang or allocate without bound: none of it may take the run,
or the other backends' results, down with it. The parent runs each unit of work in a worker process
(`python -m bnconf.conformance.isolation`), hands it the job (the backend's target and cells) as a JSON line
on stdin, and reads one JSON line per event from a pipe:

    {"event": "case", "cell": i, "input": "<describe(inputs)>", "folder": "<saved case>"}   before each case
    {"event": "cell", "cell": i, "result": {CellResult}}                                    after each cell
    {"event": "inferred", "rows": [...]}                                                    (validate only)
    {"event": "edge", "rows": [...]}                                                        edge-case outcomes
    {"event": "outputs", "rows": [...]}                        outputs on the canonical pair inputs (merge)
    {"event": "pair", "cell": k, "result": {PairResult}}        a batch of the cross-framework table

A unit of work is one backend's cells (with its edge cases; on a cluster, those on one device); `--jobs N`
runs N units at once, each from its own driver thread (`run_concurrently`), and how many run at once never
changes a result. A local run keeps a worker that finished its unit for the next unit of the same target
(`WorkerPool`: a framework is imported about once per job, not once per backend), and a batch of the
cross-framework table takes a kept worker that holds one of its backends' targets; one that failed is never
reused.
Each attempt at a unit goes through a `supervise` function: `_supervise` (a local worker, below) or a Ray
task (conformance/ray_cluster.py) that runs `_supervise` on a cluster node.

The parent kills the worker when a case runs longer than `Limits.seconds` or the worker's process tree
holds more than `Limits.memory_bytes` resident, and reports the cell as "timed out", "out of memory" or
"crashed" (signal or exit code, with the last line of the worker's stderr) together with the input it was
running, copied as a replayable case folder (`bnconf replay`). The backend's remaining cells run in a fresh
worker; an edge case that crashes is that case's outcome. The cross-framework table runs in more workers
(batches of pairs, each worker loading the frameworks its pairs need): a pair that crashes is reported as
such and the next pairs go on.
Workers start in their own session, so Ctrl-C reaches only the parent, which stops them.
"""

import contextlib
import functools
import json
import os
import selectors
import shlex
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
from .crosscheck import MODES, PairResult, PairRow, representatives, run_pair
from .status import CellStatus
from .user_records import attach_targets, job_records
POLL_SECONDS = 0.05
EDGE, PROBE, OUTPUTS = -1, -2, -3  # the "cell" of a case event sent by an edge case, a convention probe, the outputs
EDGE_KEY = ("device", "dtype", "case", "mode")  # identifies an edge-case outcome


@dataclass(frozen=True)
class Limits:
    """Per case (start-up included) wall-clock seconds; resident memory of the worker and its children."""

    seconds: float = 120.0
    memory_bytes: int = 8 * 2**30


def cell_from_dict(d: dict) -> CellResult:
    return CellResult(**{**d, "rows": [QuantityRow(**r) for r in d.get("rows", [])]})


def pair_from_dict(d: dict) -> PairResult:
    rows = d.get("rows")
    return PairResult(**{**d, "rows": None if rows is None else [PairRow(**r) for r in rows]})


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
    """Kill the worker's whole session, its own children too (also those left after the worker itself died),
    and reap it."""
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
    """One worker process, fed one job (a JSON line) at a time on its stdin, and the events it sends back."""

    def __init__(self, key=None):
        self.key = key  # what it has loaded (its jobs' target or affinity): a kept worker takes only those jobs
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - read back when a job fails
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bnconf.conformance.isolation", str(write)],
            stdin=subprocess.PIPE, stdout=self.stderr, stderr=self.stderr, pass_fds=(write,), start_new_session=True,
        )
        os.close(write)
        self.pipe = os.fdopen(read, "rb", buffering=0)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.pipe, selectors.EVENT_READ)
        self.buffer, self.stderr_start = b"", 0

    def submit(self, job: dict, last: bool) -> None:
        """Hand the worker `job`; with `last`, its stdin is closed after it (the worker ends when it is done)."""
        self.buffer, self.stderr_start = b"", self.stderr.seek(0, os.SEEK_END)
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()
        if last:
            self.proc.stdin.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

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
        """Python's fatal-error line (faulthandler) when there is one, else the last line of stderr (of its
        current job)."""
        self.stderr.seek(self.stderr_start)
        lines = [ln.strip() for ln in self.stderr.read().decode(errors="replace").splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith("Fatal Python error")]
        return (fatal or lines or [""])[-1][:300]

    def close(self) -> None:
        _stop(self.proc)
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.selector.close()
        self.pipe.close()
        self.stderr.close()


class WorkerPool:
    """Finished battery workers kept for the next unit of the same key (its target, or for a backend served by a
    child process its `affinity`), so that one local run starts a framework's worker (and imports it, 2 to 10 s)
    about once per concurrent job rather than once per backend; a Keras target's backend processes are kept with
    them. A worker that failed (crash, time-out, memory) is
    never kept; at most `size` are kept, the oldest closed first; `close()` ends them all. A reused worker's
    memory limit counts what its earlier units left resident. Thread-safe. Its workers are started from a thread
    of its own that lives as long as it does: a worker dies with the thread that started it (PR_SET_PDEATHSIG
    follows the parent thread), and a unit's thread ends with its part of the run."""

    def __init__(self, size: int):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self.size, self.idle, self.lock = max(1, size), [], threading.Lock()
        self.starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnconf-worker-starter")

    def take(self, keys: list) -> "_Worker":
        """A live kept worker holding one of `keys` (what the job loads), else a new one holding the first."""
        with self.lock:
            for w in list(self.idle):
                if not w.alive():
                    self.idle.remove(w)
                    w.close()
                elif w.key in keys:
                    self.idle.remove(w)
                    return w
        return self.starter.submit(_Worker, keys[0]).result()

    def keep(self, worker: "_Worker") -> None:
        with self.lock:
            self.idle.append(worker)
            surplus = self.idle[:-self.size] if len(self.idle) > self.size else []
            del self.idle[:len(surplus)]
        for w in surplus:
            w.close()

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for w in idle:
            w.close()
        self.starter.shutdown(wait=True)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _failure(what: str, case: dict | None, crash_dir: Path, done: int, target: str | None) -> str:
    """A failure's reason: what happened and the input it was running (kept as a replayable folder, with
    the command that replays it on the same target)."""
    if case is None:
        return f"{what}, " + ("between cases" if done else "before its first case (importing or starting the backend)")
    reason = f"{what} while running {case['input']}"
    if case.get("folder") and Path(case["folder"]).is_dir():
        kept = crash_dir / Path(case["folder"]).name
        shutil.copytree(case["folder"], kept, dirs_exist_ok=True)
        reason += f"; replay: bnconf replay {shlex.quote(str(kept))} --backend {shlex.quote(target or 'TARGET')}"
    return reason


def _supervise(job: dict, limits: Limits, crash_dir: Path, handle, on_idle=None,
               pool: WorkerPool | None = None) -> tuple[str, str, dict | None] | None:
    """Run one worker on `job`, handing each event to `handle(event)`, within `limits`; `on_idle()` is called
    when a poll brings no event (the run waits on a slow case: time to flush what arrived). With `pool`, the
    worker comes from it (one kept from a unit of the same target, or a new one) and goes back to it when the
    job is done.

    None when the worker says it is done; else (kind, reason, the "case" event it was running or None), kind
    a CellStatus: CRASHED (a signal, an exit code, or an exit without "done"), TIMED_OUT, OUT_OF_MEMORY."""
    with tempfile.TemporaryDirectory(prefix="bnconf-worker-") as tmp:
        worker = pool.take(job["keys"]) if pool is not None else _Worker()
        worker.submit({**job, "scratch": tmp}, last=pool is None)
        case, started, done, finished, failure = None, time.monotonic(), 0, False, None
        try:
            while failure is None:
                events, closed = worker.events(POLL_SECONDS)
                if not events and on_idle:
                    on_idle()
                for e in events:
                    started = time.monotonic()
                    if e["event"] == "case":
                        case = e
                    elif e["event"] == "done":
                        finished = True
                    else:
                        case, done = None, done + 1
                    handle(e)
                if finished and pool is not None:
                    pool.keep(worker)
                    worker = None
                    return None
                if closed:
                    try:  # the pipe is closed: the worker is ending, within what is left of the time limit
                        code = worker.proc.wait(timeout=max(1.0, limits.seconds - (time.monotonic() - started)))
                    except subprocess.TimeoutExpired:
                        _stop(worker.proc)
                        code = None
                    if finished:
                        return None
                    if code is None:
                        failure = (CellStatus.TIMED_OUT, f"timed out: no result within {limits.seconds:g} s")
                    else:
                        what = f"crashed with {_signal_name(code)}" if code < 0 else f"exited with code {code} unfinished"
                        last = worker.last_stderr_line()
                        failure = (CellStatus.OUT_OF_MEMORY if "MemoryError" in last else CellStatus.CRASHED,
                                   what + (f" ({last})" if last else ""))
                elif time.monotonic() - started > limits.seconds:
                    _stop(worker.proc)
                    failure = (CellStatus.TIMED_OUT, f"timed out: no result within {limits.seconds:g} s")
                elif (rss := tree_rss(worker.proc.pid)) > limits.memory_bytes:
                    _stop(worker.proc)
                    failure = (CellStatus.OUT_OF_MEMORY, f"out of memory: {rss / 2**30:.2f} GiB resident, over the "
                                                f"{limits.memory_bytes / 2**30:g} GiB limit")
            return failure[0], _failure(failure[1], case, crash_dir, done, job.get("target")), case
        finally:
            if worker is not None:
                worker.close()


@dataclass(frozen=True)
class Unit:
    """One unit of work: one backend's cells on its devices (one device per unit on a cluster, where a GPU unit
    needs a GPU node), with its edge cases there (and, in the backend's first unit, its convention inference and
    its outputs on the canonical pair inputs, on `device`)."""

    backend: object
    devices: tuple[str, ...]
    indices: tuple[int, ...]  # into the run's cells
    first: bool  # the backend's first unit

    @property
    def device(self) -> str:
        """The unit's first device: where the outputs on the canonical pair inputs are computed."""
        return self.devices[0]


def units_of(cells, per_device: bool = False) -> list[Unit]:
    """The run's units, in the cells' order: one per backend, or with `per_device` one per backend and device
    (a Ray cluster's: each declares what its device needs). One worker per backend here: a device the machine
    lacks then costs no worker of its own (a framework's import, to say "unavailable"). The split depends on
    the cells alone (never on --jobs), so that the same seed gives the same report however many run at once."""
    groups: dict[tuple, list[int]] = {}
    for i, (backend, device, *_rest) in enumerate(cells):
        groups.setdefault((id(backend), device) if per_device else (id(backend),), []).append(i)
    seen, out = set(), []
    for key, indices in groups.items():
        devices = tuple(dict.fromkeys(cells[i][1] for i in indices))
        out.append(Unit(cells[indices[0]][0], devices, tuple(indices), key[0] not in seen))
        seen.add(key[0])
    return out


def affinity(backend) -> str | None:
    """What a worker that ran `backend` holds that another backend can reuse: for a backend served by a child
    process (adapters/subprocess_backend.py: the Keras backends, one child per Keras backend setting) its target
    and environment, the same for every backend that child serves; None for the others."""
    child = getattr(backend, "_child", None)
    if child is None:
        return None
    return f"{child.target}|" + ",".join(f"{k}={v}" for k, v in sorted(child.env.items()))


def _worker_key(backend) -> str:
    """What a worker that loaded `backend` holds for a later job (`WorkerPool.take`): the child process that
    serves it (`affinity`), else its target."""
    from ..adapters.registry import origin

    return affinity(backend) or origin(backend)


def chains_of(units: list[Unit]) -> list[list[Unit]]:
    """The units as chains that run one after another on one worker: the units of the backends one child process
    serves (same `affinity`) in one chain, so that its child starts once per run (a Keras child imports the
    framework and Keras: about 5 s) rather than once per worker that meets it; every other unit alone. In the
    units' order (a chain where its first unit is); results never depend on it."""
    chains: dict = {}
    for u in units:
        chains.setdefault(affinity(u.backend) or id(u), []).append(u)
    return list(chains.values())


class Stopped(Exception):
    """Raised in a unit's thread when the run is being stopped (Ctrl-C): its worker is killed on the way out."""


def _guarded(callback, stop, lock):
    """`callback` as a unit's thread calls it: first Stopped when the run is being stopped (its worker is then
    killed on the way out), then the callback (if any) under the run's lock, one thread at a time."""
    def call(*args) -> None:
        if stop.is_set():
            raise Stopped
        if callback:
            with lock:
                callback(*args)
    return call


def run_concurrently(tasks, jobs: int) -> None:
    """Call each of `tasks` (a function of one argument: the stop event to honour) on up to `jobs` threads at once.
    An exception from one (or Ctrl-C in the caller) stops the others, which kill their workers, and is raised."""
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    stop = threading.Event()
    if jobs <= 1:
        for task in tasks:
            task(stop)
        return
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="bnconf-unit")
    futures = [pool.submit(task, stop) for task in tasks]
    try:
        while True:  # short waits: Ctrl-C reaches this (main) thread between them
            done, pending = wait(futures, timeout=0.2, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                raise failed[0].exception()
            if not pending:
                return
    except BaseException:
        stop.set()
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_isolated(cells, examples: int, seed: int, limits: Limits = Limits(), crash_dir="bnconf-crashes",
                 progress=None, on_cell=None, infer: bool = False, edge: bool = False,
                 extras: dict | None = None, on_idle=None, cases_dir=None, jobs: int = 1, supervise=None,
                 pair_examples: int = 0, outputs_for=(), per_device: bool = False,
                 lock=None, pool: "WorkerPool | None" = None) -> tuple[list[CellResult], dict]:
    """The battery over `cells` ((backend, device, dtype, mode) tuples), one worker per unit (`units_of`: a
    backend's cells, on one device each with `per_device`), `jobs` workers at once, and per backend the convention inference (`infer`),
    the edge cases (`edge`) on the cells' devices and dtypes, and with `pair_examples`, for the backends named
    in `outputs_for` (the cross-framework table's representatives), their outputs on the canonical pair inputs
    (conformance/pair_outputs.py, for `bnconf merge`).

    Backends loaded from a target (every built-in, every `--backend`) run isolated; an object built in
    this process (no target to load it from again) runs here. `on_cell(result)` sees each result as it
    arrives (callbacks are never called from two threads at once). Returns (results in the cells' order,
    {"inferred": {backend: rows}, "edge": {backend: rows}, "outputs": {backend: rows}}), the latter filled in
    place as rows arrive when the caller passes it as `extras` (an interrupted run keeps them) and put in the
    backends' and devices' order at the end; `on_idle()` is called while a worker is busy with a case and
    nothing arrives. With `cases_dir`, every NON-CONFORMANT row, ERROR cell and DIFFERS inference row saves
    its case there (battery.run_cell, inference.report_rows), written by the worker itself. `supervise` runs one
    attempt at a unit (default `_supervise`: a local worker process; conformance/ray_cluster.py: a Ray task).
    `lock` (an RLock the caller shares with other threads that change the same state) is held around every
    callback and every change to `extras`. `pool`: the local workers' `WorkerPool`, when the caller keeps its
    workers for later work (the cross-framework table) and closes it; by default one of this run's own."""
    import threading

    from ..adapters.registry import origin

    crash_dir = Path(crash_dir)
    supervise = supervise or _supervise
    results: list[CellResult | None] = [None] * len(cells)
    extras = {"inferred": {}, "edge": {}, "outputs": {}} if extras is None else extras
    for kind in ("inferred", "edge", "outputs"):
        extras.setdefault(kind, {})
    lock = lock or threading.RLock()  # one callback at a time: results, extras, progress, the report's writer

    def arrived(i: int, cell: CellResult) -> None:
        with lock:
            results[i] = cell
            if progress:
                backend, device, dtype, mode = cells[i]
                progress(f"{_worker_tag()}[{sum(r is not None for r in results)}/{len(cells)}] {backend.name} {device} "
                         f"{dtype} {mode.value}: {cell.status}")
            if on_cell:
                on_cell(cell)

    def run_unit(unit: Unit, stop) -> None:
        backend = unit.backend
        target = origin(backend)
        unit_cells = [cells[i][1:] for i in unit.indices]
        if target is None:  # nothing to load it from in a child: run it here
            for i in unit.indices:
                arrived(i, run_cell(*cells[i], examples, seed, cases_dir=cases_dir))
            found = extras_for(backend, unit_cells, infer and unit.first, edge, cases_dir=cases_dir)
            if unit.first and pair_examples and backend.name in outputs_for:
                found["outputs"] = output_rows(backend, pair_examples, seed, unit.device)
            with lock:
                for kind, rows in found.items():
                    extras[kind].setdefault(backend.name, []).extend(rows)
            return

        def event(e: dict) -> None:
            if e["event"] == "cell":
                arrived(e["cell"], cell_from_dict(e["result"]))
            elif e["event"] in extras:
                extras[e["event"]].setdefault(backend.name, []).extend(e["rows"])

        handle, idle = _guarded(event, stop, lock), _guarded(on_idle, stop, lock)

        infer_cells = [cells[i][1:] for i in range(len(cells)) if cells[i][0] is backend]
        todo = list(unit.indices)
        wanted = {"infer": infer and unit.first, "edge": edge,
                  "outputs": bool(pair_examples) and unit.first and backend.name in outputs_for}
        if progress:
            with lock:
                progress(f"{_worker_tag()}{backend.name} on {', '.join(unit.devices)}: {len(todo)} cells"
                         + (", edge cases" if edge else "") + (", convention inference" if wanted["infer"] else ""))
        while todo or any(wanted.values()):
            with lock:
                edge_done = [[r[k] for k in EDGE_KEY] for r in extras["edge"].get(backend.name, [])
                             if r["device"] in unit.devices]
            job = dict(kind="battery", target=target, keys=[_worker_key(backend)], backend=backend.name,
                       examples=examples, seed=seed, **wanted,
                       pair_examples=pair_examples, device=unit.device,
                       records=job_records([backend]),  # the records files attached to it, attached there too
                       cases_dir=None if cases_dir is None else str(cases_dir),
                       cells=[[i, *cells[i][1:3], cells[i][3].value] for i in todo],
                       extra_cells=[[d, t, m.value] for d, t, m in unit_cells],
                       infer_cells=[[d, t, m.value] for d, t, m in infer_cells], edge_done=edge_done)
            try:
                failure = supervise(job, limits, crash_dir, handle, idle)
            except Stopped:
                return
            with lock:
                todo = [i for i in todo if results[i] is None]
                if failure is None:
                    break
                kind, reason, case = failure
                if case is None or case["cell"] in (PROBE, OUTPUTS):  # start-up (it would repeat), a probe, the outputs
                    for i in todo:
                        _, device, dtype, mode = cells[i]
                        arrived(i, CellResult(backend.name, backend.convention.name, device, dtype, mode.value, kind, reason))
                    todo = []
                    if wanted["infer"] and not extras["inferred"].get(backend.name):
                        extras["inferred"][backend.name] = [dict(
                            backend=backend.name, property="-", value=None, agrees=False, verdict=kind.value.upper(),
                            candidates={}, evidence=reason)]
                    wanted = {"infer": False, "edge": wanted["edge"] and case is not None, "outputs": False}
                elif case["cell"] == EDGE:  # that edge case's outcome; the others go on in a fresh worker
                    extras["edge"].setdefault(backend.name, []).append(
                        dict(case["edge"], backend=backend.name, agrees=False, outcome=f"{kind.value}: {reason}",
                             recorded=None))
                    wanted = {"infer": False, "edge": True, "outputs": False}
                else:
                    _, device, dtype, mode = cells[case["cell"]]
                    arrived(case["cell"], CellResult(backend.name, backend.convention.name, device, dtype, mode.value,
                                                     kind, reason))
                    todo = [i for i in todo if results[i] is None]

    def run_chain(chain: list[Unit], stop) -> None:
        for u in chain:
            if stop.is_set():
                return
            run_unit(u, stop)

    units = units_of(cells, per_device)
    local = [u for u in units if origin(u.backend) is None]  # in this process: one at a time, after the others
    local_workers = supervise is _supervise  # a cluster's task starts its own worker
    own = WorkerPool(jobs) if local_workers and pool is None else None
    if local_workers:
        supervise = functools.partial(_supervise, pool=pool or own)
    try:
        run_concurrently([functools.partial(run_chain, chain) for chain in chains_of(
            [u for u in units if origin(u.backend) is not None])], jobs)
    finally:
        if own is not None:
            own.close()
    for u in local:
        run_unit(u, threading.Event())
    _in_order(extras, units)
    return list(results), extras


def _worker_tag() -> str:
    """"[worker K] " on a unit's thread (--jobs above 1: which of the concurrent workers says it), else ""."""
    import threading

    name = threading.current_thread().name
    return f"[worker {int(name.rsplit('_', 1)[1]) + 1}] " if name.startswith("bnconf-unit_") else ""


def _in_order(extras: dict, units) -> None:
    """Each kind of extra rows in the backends' order, a backend's edge rows in its devices' order (rows
    arrive in whatever order the concurrent units finish)."""
    names = list(dict.fromkeys(u.backend.name for u in units))
    unit_rank = {(u.backend.name, d): k for k, (u, d) in enumerate((u, d) for u in units for d in u.devices)}
    for kind, table in extras.items():
        ordered = {n: table[n] for n in names if n in table} | {n: r for n, r in table.items() if n not in names}
        if kind == "edge":  # a stable sort: within a unit, the order its worker sent
            ordered = {n: sorted(rows, key=lambda row, n=n: unit_rank.get((n, row.get("device")), len(units)))
                       for n, rows in ordered.items()}
        table.clear()
        table.update(ordered)


def run_matrix_isolated(backends, examples: int, seed: int, limits: Limits = Limits(), device: str = "cpu",
                        progress=None, slots: list | None = None, on_pair=None, on_idle=None, jobs: int = 1,
                        supervise=None, lock=None, pool: "WorkerPool | None" = None) -> list[PairResult]:
    """The cross-framework table (crosscheck.run_matrix) in worker processes: the pairs split into `jobs`
    batches of consecutive pairs, one worker each, `jobs` at once (a pair's result depends on the seed alone,
    never on its batch; with `pool`, a batch takes a kept worker holding one of its backends' targets, which
    then need not import that framework again); a pair that crashes, hangs or runs out of memory is that pair's
    result, and the pairs after it run in another worker.

    `slots` (a list the caller keeps) is filled in place, one entry per (pair, mode), None until it finishes,
    so that an interrupted run keeps the finished pairs; `on_pair()` is called after each, under `lock` (an RLock
    the caller may share with other threads that change the same state)."""
    import threading

    from ..adapters.registry import origin

    supervise = supervise or _supervise
    if supervise is _supervise and pool is not None:
        supervise = functools.partial(_supervise, pool=pool)
    reps = [b for b in representatives(backends, device) if origin(b) is not None]
    pairs = [(a, b, mode) for k, a in enumerate(reps) for b in reps[k + 1:] for mode in MODES]
    results = [] if slots is None else slots
    results[:] = [None] * len(pairs)
    done = on_pair or (lambda: None)
    lock = lock or threading.RLock()
    size = -(-len(pairs) // max(1, min(jobs, len(pairs) or 1)))
    batches = [list(range(start, min(start + size, len(pairs)))) for start in range(0, len(pairs), size or 1)]

    def run_batch(batch: list[int], stop) -> None:
        def event(e: dict) -> None:
            if e["event"] == "case" and progress:
                progress(f"[pair {e['cell'] + 1}/{len(pairs)}] {e['input']}")
            elif e["event"] == "pair":
                results[e["cell"]] = pair_from_dict(e["result"])
                done()

        handle, idle = _guarded(event, stop, lock), _guarded(on_idle, stop, lock)

        todo = list(batch)
        while todo:
            used = [b for b in reps if any(b in pairs[k][:2] for k in todo)]
            job = dict(kind="matrix", examples=examples, seed=seed, device=device, records=job_records(used),
                       backends=[[origin(b), b.name] for b in used],
                       keys=list(dict.fromkeys(_worker_key(b) for b in used)),  # it loads the others
                       pairs=[[k, pairs[k][0].name, pairs[k][1].name, pairs[k][2].value] for k in todo])
            try:
                failure = supervise(job, limits, Path(tempfile.gettempdir()), handle, idle)
            except Stopped:
                return
            with lock:
                if failure is not None:
                    kind, reason, case = failure
                    failed = [case["cell"]] if case is not None else [k for k in todo if results[k] is None]
                    for k in failed:
                        a, b, mode = pairs[k]
                        results[k] = PairResult(a.name, b.name, mode.value, "error", f"{kind.value}: {reason}")
                        done()
                todo = [k for k in todo if results[k] is None]

    run_concurrently([functools.partial(run_batch, batch) for batch in batches], jobs)
    return [r for r in results if r is not None]


def output_rows(backend, examples: int, seed: int, device: str) -> list[dict]:
    """The backend's outputs on the canonical pair inputs (conformance/pair_outputs.py), for `bnconf merge`."""
    from .pair_outputs import rows_for

    return rows_for(backend, examples, seed, device)


def extras_for(backend, cells, infer: bool, edge: bool, before_edge=None, on_edge=None, edge_done=(),
               before_probe=None, cases_dir=None) -> dict:
    """Inference and edge-case rows for `backend` over the (device, dtype, mode) `cells` it ran; the inference
    probes in the widest of the cells' dtypes the backend declares (inference.probe_dtypes), and saves DIFFERS
    rows under `cases_dir`.
    `before_edge(device, case, mode, dtype)` is told before each edge case runs; with `on_edge(row)` each edge
    outcome goes there as it arrives instead of into the result; `edge_done` lists (device, dtype, case id,
    mode) already run."""
    out = {}
    if infer:
        from .inference import report_rows

        out["inferred"] = report_rows(backend, before=before_probe, dtypes=[dtype for _, dtype, _ in cells],
                                      cases_dir=cases_dir)
    if edge:
        from .edge import as_row, run_edge_cases

        rows = []
        dtypes = tuple(dict.fromkeys(dtype for _, dtype, _ in cells))
        for device in dict.fromkeys(d for d, _, _ in cells):
            before = before_edge and (lambda *a, device=device: before_edge(device, *a))
            run_edge_cases(backend, device, dtypes, before=before, after=lambda o: (on_edge or rows.append)(as_row(o)),
                           skip={(t, c, m) for d, t, c, m in edge_done if d == device})
        if on_edge is None:
            out["edge"] = rows
    return out


# ---------------------------------------------------------------- the worker


def _battery_job(job: dict, send) -> None:
    from ..adapters.registry import load
    from .repro import save_case

    backend = next(b for b in load(job["target"]) if b.name == job["backend"])
    attach_targets([backend], job.get("records", ()))  # the run's records files apply here as in the parent
    scratch = Path(job["scratch"]) / "cases"
    for index, device, dtype, mode in job["cells"]:
        send(event="case", cell=index, input=f"{mode} {dtype} {device}, before its first case")

        @contextmanager
        def watched(backend, mode, inputs, dtype, device, index=index):
            folder = save_case(scratch, backend, mode, inputs, dtype, device)
            send(event="case", cell=index, input=f"{mode.value} {dtype} {device}: {describe(inputs)}", folder=str(folder))
            yield
            shutil.rmtree(folder, ignore_errors=True)

        cell = run_cell(backend, device, dtype, Mode(mode), job["examples"], job["seed"], watch=watched,
                        cases_dir=job.get("cases_dir"))
        send(event="cell", cell=index, result=asdict(cell))

    def before_probe(mode, r):
        send(event="case", cell=PROBE, input=f"convention probe: {mode.value} {r.dtype} {r.device} on x of shape {r.x.shape}")

    def before_edge(device, case, mode, dtype):
        send(event="case", cell=EDGE, input=f"edge case {case.id} {mode.value} {dtype} {device}",
             edge=dict(device=device, dtype=dtype, case=case.id, mode=mode.value))

    cells = [(device, dtype, Mode(mode)) for device, dtype, mode in job["extra_cells"]]
    if job["infer"]:
        infer_cells = [(device, dtype, Mode(mode)) for device, dtype, mode in job.get("infer_cells", job["extra_cells"])]
        send(event="inferred", rows=extras_for(backend, infer_cells, True, False, before_probe=before_probe,
                                               cases_dir=job.get("cases_dir"))["inferred"])
    if job.get("outputs"):
        send(event="case", cell=OUTPUTS, input=f"the outputs on the canonical pair inputs ({job['device']})")
        send(event="outputs", rows=output_rows(backend, job["pair_examples"], job["seed"], job["device"]))
    if job["edge"]:
        extras_for(backend, cells, False, True, before_edge=before_edge, on_edge=lambda row: send(event="edge", rows=[row]),
                   edge_done=[tuple(k) for k in job["edge_done"]])


def _matrix_job(job: dict, send) -> None:
    from ..adapters.registry import load

    by_name = {}
    for target, name in job["backends"]:
        by_name[name] = next(b for b in load(target) if b.name == name)
    attach_targets(list(by_name.values()), job.get("records", ()))
    for k, a, b, mode in job["pairs"]:
        send(event="case", cell=k, input=f"{a} vs {b} {mode}")
        try:
            result = run_pair(by_name[a], by_name[b], Mode(mode), job["examples"], job["seed"], job["device"])
        except Exception as e:  # noqa: BLE001 - one pair's failure never loses the others
            result = PairResult(a, b, mode, "error", f"{type(e).__name__}: {e}")
        send(event="pair", cell=k, result=asdict(result))


def _worker(fd: int) -> int:
    """Run each job (a JSON line on stdin) in turn until stdin closes, each ended by a "done" event."""
    out = os.fdopen(fd, "w", buffering=1)

    def send(**event) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    for line in sys.stdin:
        if line.strip():
            job = json.loads(line)
            {"battery": _battery_job, "matrix": _matrix_job}[job["kind"]](job, send)
            send(event="done")
    return 0


def _die_with_the_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies (a parent killed with
    SIGKILL runs no cleanup, and the worker lives in its own session)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    import faulthandler

    _die_with_the_parent()
    faulthandler.enable()  # a segfault leaves "Fatal Python error: Segmentation fault" and the stack on stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    raise SystemExit(_worker(int(sys.argv[1])))
