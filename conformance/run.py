"""One run of `bnconf report` / `bnconf validate`: carrying it out and deciding its overall verdict.

    RunOptions + cells --execute--> RunState (filled in place as results arrive, so an interrupted run
                                    keeps everything that finished) --failures--> why it does not conform

The battery's cells, then per backend its edge cases (and, for validate, its convention inference), then the
distributed part (with `RunOptions.replicas`: every replica backend at every world size and split,
conformance/replica_battery.py; its backends run in their own worker processes), then the cross-framework
table; isolated in worker processes (conformance/isolation.py) unless asked otherwise.
A run conforms when `failures(state)` is empty: every rule that can fail it is one function below.
"""

import contextlib
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from . import battery, crosscheck, isolation, user_records
from .replica_cases import DEFAULT_WORLD_SIZES


class Phase(str, Enum):
    """Where a run is: what an interrupted report says it was doing."""

    BATTERY = "battery"
    REPLICAS = "distributed part"
    PAIRS = "cross-framework pairs"
    DONE = "done"


@dataclass(frozen=True)
class RunOptions:
    examples: int
    seed: int
    pair_examples: int
    limits: isolation.Limits
    isolated: bool = True
    infer: bool = False  # convention inference (validate)
    edge_cases: bool = True
    records: tuple[str, ...] = ()  # records files (--records): attached to every backend, workers included
    replicas: bool = False  # the distributed part (the CLI turns it on for `bnconf report`)
    world_sizes: tuple[int, ...] = DEFAULT_WORLD_SIZES
    replica_examples: int | None = None  # examples per distributed cell (None: REPLICA_EXAMPLES)
    replica_dtypes: tuple[str, ...] = ()  # the distributed part's dtypes (empty: float32 and float64 where declared)
    jobs: int = 1  # isolated workers at once (--jobs; a Ray cluster: the units in flight)
    supervise: object = None  # runs one attempt at a unit of work (None: a local worker; ray_cluster: a Ray task)


REPLICA_EXAMPLES = 3  # per distributed cell in the default report (benchmarks/bench_replicas.py: the time budget)


@dataclass
class RunState:
    """Everything that has arrived so far."""

    cells_planned: int
    results: list = field(default_factory=list)  # battery.CellResult, in arrival order
    inferred: dict = field(default_factory=dict)  # backend name -> inference rows
    edge: dict = field(default_factory=dict)  # backend name -> edge-case rows
    outputs: dict = field(default_factory=dict)  # backend name -> its outputs on the canonical pair inputs (merge)
    pair_slots: list = field(default_factory=list)  # crosscheck.PairResult or None (not finished)
    replica_cells: list = field(default_factory=list)  # replica_results.ReplicaCell, in arrival order
    replica_unavailable: list = field(default_factory=list)  # registry.Unavailable: replica families not loaded
    replica_pairs: list = field(default_factory=list)  # replica_pairs.ReplicaPairResult: synchronized backends paired
    phase: Phase = Phase.BATTERY

    @property
    def pairs(self) -> list:
        return [p for p in self.pair_slots if p is not None]

    def rows(self, kind: str, backends) -> list[dict]:
        """The inference ("inferred") or edge-case ("edge") rows of `backends`, in their order."""
        table = self.inferred if kind == "inferred" else self.edge
        return [r for b in backends for r in table.get(b.name, [])]


# ---------------------------------------------------------------- the overall verdict: one function per rule


def cell_failures(results) -> list[str]:
    """A cell that raised, crashed, timed out or ran out of memory; a quantity that is NON-CONFORMANT."""
    out = []
    for c in results:
        where = f"{c.backend} {c.device} {c.dtype} {c.mode}"
        if not c.status.acceptable:
            out.append(f"{where}: {c.status.value}")
        out += [f"{where} {r.quantity}: {r.verdict_text}" for r in c.rows if not r.verdict.accepted]
    return out


def edge_failures(rows) -> list[str]:
    """An edge-case outcome that disagrees with the spec and that no record explains."""
    return [f"{r['backend']} edge case {r['case']} {r['mode']} {r['dtype']}: {r['outcome']}"
            for r in rows if not r["agrees"] and not r["recorded"]]


def inference_failures(rows) -> list[str]:
    """A convention property that DIFFERS from the declared record unexplained, or probing that raised,
    crashed, timed out or ran out of memory: validate cannot vouch for what it could not infer."""
    accepted = lambda v: v == "agrees" or v.startswith("differs as recorded")  # noqa: E731
    return [f"{r['backend']} convention {r['property']}: {r['verdict']}" for r in rows if not accepted(r["verdict"])]


def pair_failures(pairs) -> list[str]:
    """A cross-framework pair that could not run, or that differs in a way the spec does not predict."""
    out = [f"{p.source} vs {p.target} {p.mode}: {p.status}" for p in pairs if p.status == "error"]
    out += [f"{p.source} vs {p.target} {p.mode} {r.quantity}: {r.verdict}"
            for p in pairs for r in p.rows or [] if r.verdict == crosscheck.UNEXPECTED]
    return out


def replica_failures(cells) -> list[str]:
    """A distributed cell that crashed, timed out or raised, and a quantity that is not accepted (a failure no
    known discrepancy explains); an unsupported or skipped cell does not fail the run."""
    out = []
    for c in cells:
        where = f"{c.backend} world size {c.world_size} {c.split} {c.dtype}"
        if c.failed:
            out.append(f"{where}: {c.status}: {c.reason}")
        out += [f"{where} {r.quantity}: {r.verdict}" + (f" ({r.mistake})" if r.mistake else "")
                for r in c.rows if not r.accepted]
    return out


def replica_pair_failures(results) -> list[str]:
    """A pair of synchronized backends whose setting raised, or that differs in a way neither the spec nor a
    record predicts (replica_pairs.failures)."""
    from .replica_pairs import failures as unexpected

    return unexpected(results)


def failures(state: RunState, backends) -> list[str]:
    """Why the run does not conform (empty: it conforms)."""
    return (cell_failures(state.results) + edge_failures(state.rows("edge", backends))
            + inference_failures(state.rows("inferred", backends)) + replica_failures(state.replica_cells)
            + replica_pair_failures(state.replica_pairs) + pair_failures(state.pairs))


# ---------------------------------------------------------------- carrying it out


def prepare(backends, options: RunOptions) -> None:
    """Before anything is written or run: the backends' own records checked and the run's records files
    attached to them (user_records.RecordsError, bad input, when one does not hold)."""
    user_records.prepare_records(backends, options.records)


def execute(backends, cells, options: RunOptions, state: RunState, crash_dir: Path, cases_dir: Path, progress=None,
            on_change=None, on_idle=None, replica_backends=None) -> None:
    """Run the battery, the extras, the distributed part (`options.replicas`: on `replica_backends`, None:
    every built-in replica backend, `replica_registry.discover_replicas`) and the cross-framework table on
    `prepare`d backends, filling `state` as results arrive. `on_change()` is called after each result,
    `on_idle()` while an isolated run waits on a slow case. A crash keeps its input under `crash_dir`; every
    NON-CONFORMANT row, ERROR cell and DIFFERS inference row saves its case under `cases_dir`, isolated or not
    (a failing distributed example under `cases_dir`/replicas).

    An isolated run with more than one job runs the distributed part on a thread of its own beside the battery
    (`Beside`): its replica groups wait on each other for a good part of their time, which the battery's workers
    fill (run after the battery, it kept the 2-core machine 40% idle for a minute of the default report). Every
    change to `state` and every callback happens under one lock, so `on_change` always sees a consistent state."""
    lock = threading.RLock()
    changed = _locked(on_change or (lambda: None), lock)
    progress = _locked(progress, lock) if progress else None
    cases_dir = Path(cases_dir)

    def arrived(cell) -> None:
        with lock:
            state.results.append(cell)
            changed()

    # local workers kept from the battery for the cross-framework table, which loads the same targets
    pool = isolation.WorkerPool(options.jobs) if options.isolated and options.supervise is None else None
    with pool or contextlib.nullcontext():
        distributed = None
        if options.replicas:
            def run_replica_part(stop=None) -> None:
                run_distributed(options, state, cases_dir, progress, changed, replica_backends, lock=lock, stop=stop)
            if options.isolated and options.jobs > 1:
                distributed = Beside(run_replica_part)
        try:
            run_battery_part(backends, cells, options, state, crash_dir, cases_dir, progress, arrived, changed,
                             on_idle, lock, pool)
            if options.replicas:
                with lock:
                    state.phase = Phase.REPLICAS
                if distributed:
                    distributed.wait()
                else:
                    run_replica_part()
        finally:
            if distributed:
                distributed.stop()
        if options.pair_examples:
            with lock:
                state.phase = Phase.PAIRS
            failed = {c.backend for c in state.results if c.status.failed}
            usable = [b for b in backends if b.name not in failed]  # a backend that crashed is not run again here
            if options.isolated:
                isolation.run_matrix_isolated(usable, options.pair_examples, options.seed, options.limits,
                                              progress=progress, slots=state.pair_slots, on_pair=changed,
                                              on_idle=on_idle, jobs=options.jobs, supervise=options.supervise,
                                              lock=lock, pool=pool)
            else:
                crosscheck.run_matrix(usable, options.pair_examples, options.seed, progress=progress,
                                      on_pair=lambda p: (state.pair_slots.append(p), changed()))
    state.phase = Phase.DONE


def _locked(callback, lock):
    """`callback` called under `lock`."""
    def call(*args):
        with lock:
            return callback(*args)
    return call


def run_battery_part(backends, cells, options: RunOptions, state: RunState, crash_dir: Path, cases_dir: Path,
                     progress, arrived, changed, on_idle, lock, pool=None) -> None:
    """The battery's cells and, per backend, its extras (edge cases, inference, saved outputs) into `state`;
    isolated, its local workers kept in `pool` when given (isolation.run_isolated)."""
    outputs_for = saved_outputs(backends, options)
    if options.isolated:
        results, _ = isolation.run_isolated(
            cells, options.examples, options.seed, options.limits, crash_dir, progress, arrived, infer=options.infer,
            edge=options.edge_cases, extras={"inferred": state.inferred, "edge": state.edge, "outputs": state.outputs},
            on_idle=on_idle, cases_dir=cases_dir, jobs=options.jobs, supervise=options.supervise,
            pair_examples=options.pair_examples, outputs_for=outputs_for,
            per_device=options.supervise is not None,  # a cluster's units: one per device (a GPU unit, a GPU node)
            lock=lock, pool=pool)
        with lock:
            state.results[:] = [r for r in results if r is not None]  # the cells' order, however many ran at once
        return
    battery.run_battery(cells, options.examples, options.seed, progress=progress, on_cell=arrived,
                        cases_dir=cases_dir)
    for b in backends:
        ran = [c[1:] for c in cells if c[0] is b]
        extras = isolation.extras_for(b, ran, options.infer, options.edge_cases, cases_dir=cases_dir)
        with lock:
            state.inferred.update({b.name: extras["inferred"]} if "inferred" in extras else {})
            state.edge.update({b.name: extras["edge"]} if "edge" in extras else {})
            if b.name in outputs_for:
                device = next(c[1] for c in cells if c[0] is b)
                state.outputs[b.name] = isolation.output_rows(b, options.pair_examples, options.seed, device)
            changed()


class Beside:
    """`task(stop)` on a thread of its own, started at once: `wait()` joins it (re-raising what it raised),
    `stop()` sets its stop event (the task ends before its next step) and joins it."""

    def __init__(self, task):
        self._stop, self._raised = threading.Event(), []
        self._thread = threading.Thread(target=self._run, args=(task,), name="bnconf-distributed", daemon=True)
        self._thread.start()

    def _run(self, task) -> None:
        try:
            task(self._stop)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            self._raised.append(e)

    def wait(self) -> None:
        while self._thread.is_alive():  # short joins: Ctrl-C reaches the waiting (main) thread between them
            self._thread.join(0.2)
        if self._raised:
            raise self._raised[0]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def saved_outputs(backends, options: RunOptions) -> set[str]:
    """The backends whose outputs on the canonical pair inputs the report keeps, for `bnconf merge` to pair
    them with other environments' backends: the cross-framework table's representatives (one per convention),
    when the run has a cross-framework table."""
    return {b.name for b in crosscheck.representatives(backends)} if options.pair_examples else set()


def run_distributed(options: RunOptions, state: RunState, cases_dir: Path, progress=None, changed=None,
                    replica_backends=None, lock=None, stop=None) -> None:
    """The distributed part: every replica backend's cells into `state.replica_cells` as they finish, then
    (`options.pair_examples` > 0) the synchronized backends against each other into `state.replica_pairs`,
    on the backends none of whose cells crashed, timed out or raised. The pairs run when the last cell has
    arrived, before `run_replicas` closes the backends, so they reuse the warm worker processes and compiled
    steps (a restart costs each framework family seconds); the backends are closed at the end, also when
    interrupted or stopped (`stop`, a threading.Event set by another thread). `lock` is held around each change
    to `state`."""
    from ..adapters.replica_registry import discover_replicas
    from .replica_battery import planned_cells, run_replicas
    from .replica_pairs import pair_world_sizes, run_replica_pairs

    changed = changed or (lambda: None)
    lock = lock or threading.RLock()
    if replica_backends is None:
        replica_backends, missing = discover_replicas()
        with lock:
            state.replica_unavailable = missing
    if progress:
        for u in state.replica_unavailable:
            progress(f"unavailable (distributed): {u.name}: {u.reason}")

    world_sizes, dtypes = tuple(options.world_sizes), options.replica_dtypes or None
    planned = len(planned_cells(replica_backends, world_sizes, dtypes))

    def pairs() -> None:
        failed = {c.backend for c in state.replica_cells if c.failed}
        usable = [b for b in replica_backends if b.name not in failed]
        found = run_replica_pairs(usable, options.pair_examples, options.seed, pair_world_sizes(world_sizes),
                                  progress=progress, stop=stop)
        with lock:
            state.replica_pairs.extend(found)
            changed()

    def arrived(cell) -> None:
        with lock:
            state.replica_cells.append(cell)
            changed()
        if len(state.replica_cells) == planned and options.pair_examples > 0:
            pairs()

    examples = REPLICA_EXAMPLES if options.replica_examples is None else options.replica_examples
    run_replicas(replica_backends, examples, options.seed, world_sizes, dtypes, progress=progress, on_cell=arrived,
                 cases_dir=Path(cases_dir), stop=stop)
