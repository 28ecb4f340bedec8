"""The distributed part of a run: every replica backend at every world size and split pattern, judged.

    run_replicas(backends, examples, seed) -> [ReplicaCell]   (conformance/replica_results.py)

A cell is (backend, world size, split pattern, dtype). It is "unsupported" with the reason when the backend
cannot run on the device now (`unavailable`, e.g. torch.nn.SyncBatchNorm without a GPU) or its request check
refuses the cell (`check_replica_request`: a world size, dtype, or an unequal or empty split its API cannot
express); else `examples` examples (conformance/replica_cases.py) each run as one step (forward and backward,
`backend.step`) and are judged by `spec.replica_diagnosis.judge_step` against the float64 oracle of the
declared replica semantics, which names the mistake when a replica hypothesis explains a failure. Each
quantity keeps its worst example (a failing one first, then the largest error/bound): a `ReplicaRow`.

Faults end the cell, never the run: a replica that does not answer in time is "timed out" (ReplicaTimeout), a
dead replica process "crashed" (ReplicaCrash), any other exception an "error" with its one-line reason; the
backend's group restarts on its next call. After MAX_CONSECUTIVE_FAULTS faulting cells in a row, a backend's
remaining cells are "skipped" with the reason (a hung framework would otherwise cost its timeout per cell).
The first failing example of a cell is saved for replay (conformance/replica_repro.py). Every backend is
closed (its worker processes stopped) at the end, also when the run is interrupted.

Known discrepancies (conformance/known/replicas.py): where a record covers the example, the quantities it
names are judged against the recorded behaviour too; one that fails as declared but holds as recorded is a
"known discrepancy", and the record's use is counted in `ReplicaCell.discrepancies` (covered, needed).
"""

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..adapters.protocol import OutputError, declared_precision, real_floats, unavailable
from ..adapters.replica_protocol import ReplicaCrash, ReplicaTimeout, check_replica_request, sharded_request
from ..spec import Comparison, InputError, Verdict, compare
from ..spec.diagnosis import HYPOTHESES
from ..spec.replicas import ShardedInputs, expected_step
from ..spec.verdict import quantity_format
from ..spec.expect import exactly
from ..spec.formats import float_format
from .known.replicas import (DECLARED, EMPTY_REPLICA_KEEPS_RUNNING, FIRST_STEP_FROM_HIDDEN_STATE, NAN_EVERYWHERE,
                             ReplicaDiscrepancy,
                             replica_discrepancies_for)
from .refusal import is_refusal
from .replica_cases import DEFAULT_WORLD_SIZES, Split, case_seed, describe, sharded_case, splits_at
from .replica_results import ReplicaCell, ReplicaRow

QUANTITIES = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta")
PER_REPLICA = ("y", "running_mean", "running_var", "dx")  # tuples of W arrays in ShardedOutputs
ACCEPTED = (Verdict.CONFORMS, Verdict.ILL_CONDITIONED)
KNOWN = "known discrepancy"
MAX_CONSECUTIVE_FAULTS = 3
DEFAULT_DTYPES = ("float32", "float64")


def judge_step(observed, sharded, convention, replica, precision):
    """spec.replica_diagnosis.judge_step (imported when called: spec's replica diagnosis)."""
    from ..spec.replica_diagnosis import judge_step as judge

    return judge(observed, sharded, convention, replica, precision)


def recorded_expected(name, sharded, convention, replica, precision, backward=True):
    from ..spec.replica_diagnosis import recorded_expected as recorded

    return recorded(name, sharded, convention, replica, precision, backward)


def mistake_names() -> tuple[str, ...]:
    """Every name a diagnosis may give: the replica hypotheses, then the single-device ones."""
    from ..spec.replica_diagnosis import REPLICA_HYPOTHESES

    names = [h.name for h in REPLICA_HYPOTHESES] + [h.name for h in HYPOTHESES]
    return tuple(sorted(set(names), key=len, reverse=True))  # the longest first: a name may prefix another


# ---------------------------------------------------------------- one example


@dataclass
class Example:
    """One step through a backend, judged: the inputs as given, what it returned (in judging shapes), the
    comparisons as declared and, where a record covers it, under the recorded behaviour."""

    inputs: ShardedInputs
    observed: dict
    declared: dict[str, Comparison]
    record: ReplicaDiscrepancy | None = None
    recorded: dict[str, Comparison] = field(default_factory=dict)

    def failing(self) -> dict[str, Comparison]:
        """Quantities that match neither the declared semantics nor, where a record covers them, the record."""
        bad = {q: c for q, c in self.declared.items() if c.verdict not in ACCEPTED}
        if self.record is not None:
            for q in list(bad):
                if q in self.record.quantities and q in self.recorded and self.recorded[q].verdict in ACCEPTED:
                    del bad[q]
        return bad

    def known(self, q: str) -> bool:
        """`q` failed as declared and holds as the record says."""
        c = self.declared.get(q)
        return (self.record is not None and c is not None and c.verdict not in ACCEPTED
                and q in self.record.quantities and q in self.recorded and self.recorded[q].verdict in ACCEPTED)

    @property
    def needed(self) -> bool:
        return self.record is not None and any(
            self.declared[q].verdict not in ACCEPTED for q in self.record.quantities if q in self.declared)


def observed_quantities(outputs, inputs: ShardedInputs) -> dict[str, np.ndarray]:
    """The backend's ShardedOutputs in judging shapes: y and dx concatenated over replicas (x's shape), running
    statistics stacked (W, C), dgamma and dbeta (C,); quantities it did not return are left out. OutputError
    when a value is not a real float array or has the wrong number of replicas or shape."""
    w = inputs.world_size
    out = {}
    for q in QUANTITIES:
        value = getattr(outputs, q, None)
        if value is None:
            continue
        if q in PER_REPLICA:
            if not isinstance(value, (tuple, list)) or len(value) != w:
                raise OutputError(f"{q} must be a tuple of {w} arrays (one per replica), got {type(value).__name__}"
                                  + (f" of {len(value)}" if isinstance(value, (tuple, list)) else ""))
            parts = [real_floats(f"{q} of replica {r}", v) for r, v in enumerate(value)]
            if q in ("y", "dx"):
                for r, (p, x) in enumerate(zip(parts, inputs.shards)):
                    if p.shape != np.shape(x):
                        raise OutputError(f"{q} of replica {r} has shape {p.shape}, its shard {np.shape(x)}")
                out[q] = np.concatenate(parts, axis=0)
            else:
                out[q] = np.stack([np.reshape(p, -1) for p in parts])
        else:
            out[q] = real_floats(q, value).reshape(-1)
    return out


def run_example(backend, inputs: ShardedInputs, dtype: str, device: str, split: Split,
                records=None) -> Example:
    """One step on `inputs` (already in the backend's formats), judged. Exceptions from the backend propagate;
    outputs bnconf cannot judge raise OutputError."""
    precision = declared_precision(backend, dtype, device)
    request = sharded_request(inputs, dtype, device)
    outputs = backend.step(request)
    observed = observed_quantities(outputs, inputs)
    try:
        declared = judge_step(observed, inputs, backend.convention, backend.replica, precision)
    except ValueError as e:  # e.g. a quantity of the wrong shape: the backend's outputs, not a refusal
        raise OutputError(" ".join(str(e).split())) from e
    records = replica_discrepancies_for(backend) if records is None else records
    seen = None if inputs.running is None else inputs.running.count
    record = next((r for r in records if r.covers(backend.name, split.value, inputs.world_size, dtype, seen)), None)
    ex = Example(inputs, observed, dict(declared), record)
    if record is not None and any(declared[q].verdict not in ACCEPTED for q in record.quantities if q in declared):
        expected = recorded_values(record, observed, inputs, backend, precision)
        ex.recorded = {q: compare(q, observed[q], expected[q], quantity_format(q, precision))
                       for q in record.quantities if q in observed and q in expected}
    return ex


def recorded_values(record: ReplicaDiscrepancy, observed: dict, inputs: ShardedInputs, backend, precision) -> dict:
    """What the record says the backend computes, per quantity (spec.Expected), on the inputs its `adjust` gives:
    the declared step, a named hypothesis's model (`spec.replica_diagnosis.recorded_expected`), NaN everywhere,
    or the declared step with the running statistics of every replica whose shard is empty left as given."""
    from ..spec.replicas import expected_step

    inputs = record.adjust(inputs) if record.adjust else inputs
    backward = inputs.dys is not None
    if record.hypothesis == DECLARED:
        return expected_step(inputs, backend.convention, backend.replica, precision, backward)
    if record.hypothesis == NAN_EVERYWHERE:
        return {q: exactly(np.full(np.shape(v), np.nan), q) for q, v in observed.items()}
    if record.hypothesis == EMPTY_REPLICA_KEEPS_RUNNING:
        out = dict(expected_step(inputs, backend.convention, backend.replica, precision, backward))
        empty = np.array([n == 0 for n in inputs.rows])
        for q, given in (("running_mean", getattr(inputs.running, "mean", None)),
                         ("running_var", getattr(inputs.running, "var", None))):
            if q in out and given is not None:
                e, kept = out[q], exactly(np.tile(given, (inputs.world_size, 1)), q)
                pick = lambda a, b: np.where(empty[:, None], a, b)  # noqa: E731
                out[q] = replace(e, value=pick(kept.value, e.value), bound=pick(0.0, e.bound),
                                 bound_one_pass=pick(0.0, e.bound_one_pass), ill=pick(False, e.ill),
                                 ill_one_pass=pick(False, e.ill_one_pass), nonfinite_ok=None)
        return out
    if record.hypothesis == FIRST_STEP_FROM_HIDDEN_STATE:
        return first_step_from_hidden_state(inputs, backend, precision, backward)
    return recorded_expected(record.hypothesis, inputs, backend.convention, backend.replica, precision, backward)


def first_step_from_hidden_state(inputs: ShardedInputs, backend, precision, backward: bool) -> dict:
    """The declared step with running statistics b + R m / (1 - m) (FIRST_STEP_FROM_HIDDEN_STATE): the declared
    zero-debiased first step gives b (weight 1 on the batch), to which R m / (1 - m) is added. Its bound adds four
    roundings of that term and the momentum held in the arithmetic's format: m off by u m moves the result by
    u m |R| / (1 - m)**2 (1e4 |R| u at m = 0.99)."""
    out = dict(expected_step(inputs, backend.convention, backend.replica, precision, backward))
    m = float(inputs.momentum)
    u = max(float_format(precision.stats).unit_roundoff, float_format(precision.compute).unit_roundoff)
    for q, given in (("running_mean", inputs.running.mean), ("running_var", inputs.running.var)):
        if q in out:
            r = np.abs(np.asarray(given, dtype=np.float64))
            e, term = out[q], np.asarray(given, dtype=np.float64) * (m / (1.0 - m))
            slack = 4 * u * (np.abs(term) + m * r / (1.0 - m) ** 2) + float_format(precision.stats).smallest_subnormal
            out[q] = replace(e, value=e.value + term, bound=e.bound + slack, bound_one_pass=e.bound_one_pass + slack)
    return out


# ---------------------------------------------------------------- rows


def where(q: str, index, rows: tuple[int, ...]) -> str:
    """The worst element's place: "replica 1, (0, 2)" (y, dx: the replica and the index in its shard),
    "replica 2, channel 0" (running statistics), "channel 1" (dgamma, dbeta)."""
    if index is None:
        return ""
    if q in ("y", "dx"):
        ends = np.cumsum(rows)
        r = int(np.searchsorted(ends, index[0], side="right"))
        start = int(ends[r - 1]) if r else 0
        return f"replica {r}, {(index[0] - start, *index[1:])}"
    if q in ("running_mean", "running_var"):
        return f"replica {index[0]}, channel {index[1]}" if len(index) == 2 else f"channel {index[0]}"
    return f"channel {index[0]}"


def named_mistake(c: Comparison) -> str:
    """The mistake a comparison's detail names (a hypothesis name it starts with), else ""."""
    detail = c.detail or ""
    return next((n for n in mistake_names() if detail.startswith(n)), "")


def _severity(ratio) -> float:
    return float("inf") if ratio is None or np.isnan(ratio) else float(ratio)


@dataclass
class _Row:
    row: ReplicaRow
    failures: int = 0


def _record_example(rows: dict[str, _Row], ex: Example) -> None:
    """Count the example in each quantity's row, and make it the row's shown one when it is the worst so far
    (a failing example first, then the largest error/bound)."""
    failing = ex.failing()
    for q, c in ex.declared.items():
        slot = rows.setdefault(q, _Row(ReplicaRow(q, Verdict.CONFORMS.value, max_ratio=0.0)))
        row = slot.row
        row.examples += 1
        row.judged += int(c.judged)
        known = ex.known(q)
        ruling = ex.recorded[q] if q in failing and ex.record and q in ex.recorded else c
        worse = _severity(c.max_ratio) >= _severity(row.max_ratio)
        if q in failing:
            slot.failures += 1
        if (q in failing and (slot.failures == 1 or worse)) or (not slot.failures and worse):
            row.max_ratio, row.observed, row.expected, row.bound = c.max_ratio, c.observed, c.expected, c.bound
            row.worst = where(q, c.worst_index, ex.inputs.rows)
            shown = c if q in failing else (ex.recorded.get(q, c) if known else c)
            row.detail = shown.detail or (shown.seen() if shown.verdict not in ACCEPTED else "")
            if ruling is not c:  # a record covers the quantity and its behaviour does not hold either
                row.detail = f"{row.detail}; not as known discrepancy {ex.record.id} records: {ruling.seen()}"
            row.mistake = (named_mistake(c) or "unexplained") if q in failing else ""
            if q in failing:
                row.verdict = ruling.verdict.value
        if c.ill_conditioned and not row.detail:
            row.detail = c.ill_reason
        if slot.failures:
            continue
        if known:
            row.verdict, row.known, row.mistake = KNOWN, ex.record.id, ex.record.hypothesis
        elif c.verdict is Verdict.ILL_CONDITIONED and row.verdict == Verdict.CONFORMS.value:
            row.verdict = Verdict.ILL_CONDITIONED.value


# ---------------------------------------------------------------- a cell


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _replay(cases_dir, backend, inputs, split, dtype, device, what: str) -> str:
    if cases_dir is None:
        return ""
    from .replica_repro import replay_line, save_case

    try:
        return replay_line(save_case(cases_dir, backend, inputs, split, dtype, device, what))
    except OSError as e:
        return f"(the example could not be saved: {e.strerror or e})"


def run_replica_cell(backend, world_size: int, split: Split, dtype: str, examples: int, run_seed: int,
                     device: str | None = None, cases_dir=None, records=None) -> ReplicaCell:
    """One cell: `examples` examples of `split` at `world_size` through `backend` (see the module doc), on
    `device` (None: `device_for`)."""
    rows_per_replica = split.rows(world_size)
    device, reason = device_for(backend) if device is None else (device, unavailable(backend, device))
    cell = ReplicaCell(backend.name, world_size, split.value, list(rows_per_replica), dtype, device,
                       semantics=backend.replica.semantics.value)
    if reason:
        cell.status, cell.reason = "unsupported", reason
        return cell
    start = time.perf_counter()
    try:
        precision = declared_precision(backend, dtype, device)
        first = sharded_case(backend.convention, precision, split, world_size,
                             case_seed(run_seed, backend.name, world_size, split, dtype, 0))
        check_replica_request(backend, sharded_request(first, dtype, device))
    except ValueError as e:  # InputError: the backend's protocol check refuses the cell
        cell.status, cell.reason = "unsupported", " ".join(str(e).split())
        return cell
    rows: dict[str, _Row] = {}
    inputs = first
    try:
        for k in range(examples):
            if k:
                inputs = sharded_case(backend.convention, precision, split, world_size,
                                      case_seed(run_seed, backend.name, world_size, split, dtype, k))
            try:
                ex = run_example(backend, inputs, dtype, device, split, records)
            except ReplicaTimeout as e:
                cell.status, cell.reason = "timed out", _one_line(e)
            except ReplicaCrash as e:
                cell.status, cell.reason = "crashed", " ".join(str(e).split())
            except OutputError as e:
                cell.status, cell.reason = "error", f"returned outputs bnconf cannot judge: {e}"
            except Exception as e:  # noqa: BLE001 - a backend's failure ends its cell, not the run
                refused = isinstance(e, InputError) or (split.may_refuse and is_refusal(e))
                cell.status = "unsupported" if refused else "error"
                # a refusal is the API's, the same for every input of the cell (its shard sizes are the cell's);
                # an error names the input it raised on
                cell.reason = f"refused: {_one_line(e)}" if refused else f"{_one_line(e)} [{describe(inputs)}]"
            else:
                _record_example(rows, ex)
                if ex.record is not None:
                    counts = cell.discrepancies.setdefault(ex.record.id, [0, 0])
                    counts[0] += 1
                    counts[1] += int(ex.needed)
                if ex.failing() and not cell.replay:
                    cell.replay = _replay(cases_dir, backend, inputs, split, dtype, device,
                                          "NON-CONFORMANT: " + ", ".join(sorted(ex.failing())))
                continue
            if cell.failed and not cell.replay:
                cell.replay = _replay(cases_dir, backend, inputs, split, dtype, device, f"{cell.status}: {cell.reason}")
            break
    finally:
        cell.seconds = time.perf_counter() - start
        cell.rows = [rows[q].row for q in QUANTITIES if q in rows]
    return cell


# ---------------------------------------------------------------- the whole distributed part


def default_dtypes(backend) -> tuple[str, ...]:
    """float32 and float64, those of them the backend offers (else its first dtype): the report's default
    (benchmarks/bench_replicas.py measures its time)."""
    return tuple(d for d in DEFAULT_DTYPES if d in backend.dtypes) or tuple(backend.dtypes[:1])


def device_for(backend, preferred: str = "cpu") -> tuple[str, str]:
    """(the device to run `backend` on, "") or (its first device, why none can run now): `preferred` where the
    backend offers it and it can run, else the first of its devices that can (a GPU-only backend runs on the
    GPU where there is one)."""
    devices = tuple(backend.devices)
    order = ((preferred,) if preferred in devices else ()) + tuple(d for d in devices if d != preferred)
    reasons = []
    for d in order:
        why = unavailable(backend, d)
        if not why:
            return d, ""
        reasons.append(why)
    only = "GPU-only: " if devices and all(d not in ("cpu", "cpu-emulated") for d in devices) else ""
    return (order[0] if order else preferred), only + "; ".join(dict.fromkeys(reasons) or ["it declares no device"])


def planned_cells(backends, world_sizes=DEFAULT_WORLD_SIZES, dtypes=None) -> list[tuple]:
    """(backend, world size, split, dtype) in run order: per backend, per dtype, per world size, per split."""
    out = []
    for b in backends:
        for dtype in (dtypes or default_dtypes(b)):
            for w in world_sizes:
                out += [(b, w, s, dtype) for s in splits_at(w)]
    return out


def close_backends(backends) -> list[str]:
    """Call every backend's close() (stopping its worker processes); what failed to close, one line each."""
    problems = []
    for b in backends:
        close = getattr(b, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:  # noqa: BLE001 - one backend failing to close must not keep the others open
                problems.append(f"{b.name}: close() raised {_one_line(e)}")
    return problems


def run_replicas(backends, examples: int, seed: int, world_sizes=DEFAULT_WORLD_SIZES, dtypes=None, progress=None,
                 on_cell=None, device: str | None = None, cases_dir=None, stop=None) -> list[ReplicaCell]:
    """Every cell of every backend in order; `on_cell(cell)` sees each as it finishes; every backend is closed
    at the end, also on KeyboardInterrupt and when `stop` (a threading.Event: the run is being stopped from
    another thread) is set, which ends the run before its next cell. `dtypes` None: `default_dtypes` (float32,
    float64); `device` None: per backend, the CPU where it runs there, else its first device that can run
    (`device_for`)."""
    plan = planned_cells(backends, world_sizes, dtypes)
    cells: list[ReplicaCell] = []
    faults: dict[str, int] = {}  # backend name -> consecutive faulting cells
    try:
        for i, (b, w, split, dtype) in enumerate(plan, 1):
            if stop is not None and stop.is_set():
                break
            if progress:
                progress(f"[replicas {i}/{len(plan)}] {b.name} world size {w} {split.value} {dtype}")
            if faults.get(b.name, 0) >= MAX_CONSECUTIVE_FAULTS:
                cell = ReplicaCell(b.name, w, split.value, list(split.rows(w)), dtype, device or "cpu", status="skipped",
                                   reason=f"not run: the backend failed (crashed, timed out or raised) in "
                                          f"{MAX_CONSECUTIVE_FAULTS} cells in a row before this one",
                                   semantics=b.replica.semantics.value)
            else:
                cell = run_replica_cell(b, w, split, dtype, examples, seed, device, cases_dir)
                faults[b.name] = faults.get(b.name, 0) + 1 if cell.failed else 0
            cells.append(cell)
            if on_cell:
                on_cell(cell)
    finally:
        for line in close_backends(backends):
            if progress:
                progress(line)
    return cells


def replica_discrepancy_use(cells, backends) -> list[dict]:
    """Every record that applies to a backend that ran: its id, explanation, evidence, source, how many
    examples it covered and needed, and its status ("in use", "STALE: ...", "not reached in this run")."""
    out = []
    ran = {c.backend for c in cells if c.status not in ("unsupported", "skipped")}
    seen = set()
    for b in backends:
        if b.name not in ran:
            continue
        for r in replica_discrepancies_for(b):
            if r.id in seen:
                continue
            seen.add(r.id)
            counts = [c.discrepancies.get(r.id, [0, 0]) for c in cells]
            covered, needed = sum(k[0] for k in counts), sum(k[1] for k in counts)
            status = ("in use" if needed else f"STALE: covered {covered} example(s), none needed it" if covered
                      else "not reached in this run")
            out.append(dict(id=r.id, backends=r.backends, hypothesis=r.hypothesis, covered=covered, needed=needed,
                            status=status, explanation=r.explanation, evidence=r.evidence, source=r.source))
    return out


__all__ = ["Example", "MAX_CONSECUTIVE_FAULTS", "close_backends", "default_dtypes", "observed_quantities",
           "planned_cells", "replica_discrepancy_use", "run_example", "run_replica_cell", "run_replicas", "where"]
