"""Synchronized replica backends against each other: the same sharded step through two APIs after translation.

Every synchronized backend claims to compute single-device batch norm of the concatenated shards in its own
convention; two of them on the same shards should therefore agree once momentum and eps are translated
(`spec.translate`), except where their conventions differ in a way no parameter removes (a biased against an
unbiased running variance) or where a known replica record says one computes something else. For a pair
(A, B), at each world size and split (unequal where both APIs can express it, and equal), examples are drawn in
A's convention (conformance/replica_cases.py), B gets the same shards with its channel axis (moved where its
convention puts the channels elsewhere), momentum and eps translated, both run one step (forward and backward),
and every quantity both return (y and dx concatenated over replicas, running statistics stacked (W, C), dgamma,
dbeta) is compared as in the single-device cross-framework table (conformance/crosscheck.py):

    matches after translation    |a - b| <= bound_A + bound_B (each side's `expected_step` bounds, under its own
                                 convention and precision, on its own inputs)
    differs as the spec predicts |(a - b) - (exp_A - exp_B)| <= bound_A + bound_B: the difference the two oracles
                                 predict, named by the translation's residual (with its predicted relative size
                                 at the batch's N), or by the known replica record whose behaviour stands in for
                                 that side's declared one (conformance/known/replicas.py)
    UNEXPECTED                   neither: one of the backends, the translation or a record is wrong

A setting where a side cannot take the request (world size, an unequal split its API cannot express) is "not
comparable" with the reason; one where a side raises, crashes or times out is an "error" with the reason.
"""

import time
from dataclasses import dataclass, replace

import numpy as np

from ..adapters.protocol import declared_precision, unavailable
from ..adapters.replica_protocol import ReplicaCrash, ReplicaTimeout, check_replica_request, sharded_request
from ..spec import InputError, translate
from ..spec.conventions import new_batch_weight
from ..spec.oracle import RunningStats, channel_axis
from ..spec.replicas import Semantics, ShardedInputs, expected_step
from .arrays import round_to
from .crosscheck import _RANK, MATCHES, PREDICTED, UNEXPECTED, PairRow, _compare, _residual_text
from .known.replicas import replica_discrepancies_for
from .replica_battery import _one_line, observed_quantities, recorded_values
from .replica_cases import Split, case_seed, describe, sharded_case

STEP = "training step"  # PairRow.mode of every row: one forward and backward across replicas
SPLITS = (Split.UNEQUAL, Split.EQUAL)
DEFAULT_WORLD_SIZES = (2, 3)
DTYPES = ("float32", "float64")  # preferred first
RECORDED_MARK = " as recorded in "  # "<backend> as recorded in <record id>" in a row's residuals (reports count it)


@dataclass
class ReplicaPairResult:
    """One pair at one world size, split and dtype: "ran" (rows per quantity), "not comparable" or "error"."""

    source: str
    target: str
    world_size: int
    split: str
    dtype: str
    device: str = "cpu"
    status: str = "ran"
    reason: str = ""
    rows: list[PairRow] | None = None
    seconds: float = 0.0


def pair_world_sizes(selected) -> tuple[int, ...]:
    """The pairs' world sizes among a run's `selected` ones: DEFAULT_WORLD_SIZES where selected, else the first
    two selected above 1 (one replica combines nothing)."""
    return tuple(w for w in DEFAULT_WORLD_SIZES if w in selected) or tuple(w for w in selected if w > 1)[:2]


def synchronized(backends) -> list:
    return [b for b in backends if b.replica.semantics is Semantics.SYNCHRONIZED]


def common_setting(a, b) -> tuple[str | None, str | None, str]:
    """(device, dtype, "") both backends run on now, float32 preferred; else (None, None, why not)."""
    devices = [d for d in a.devices if d in b.devices]
    reasons = [why for d in devices for why in (unavailable(a, d), unavailable(b, d)) if why]
    device = next((d for d in devices if not unavailable(a, d) and not unavailable(b, d)), None)
    if device is None:
        return None, None, "no device both run on now" + (f": {'; '.join(dict.fromkeys(reasons))}" if reasons else
                                                           f" ({', '.join(a.devices)} vs {', '.join(b.devices)})")
    dtype = next((d for d in (*DTYPES, *a.dtypes) if d in a.dtypes and d in b.dtypes), None)
    return (device, dtype, "") if dtype else (None, None, "no common dtype")


def _draw(a, b, pa, split: Split, w: int, dtype: str, run_seed: int, k: int) -> ShardedInputs:
    """Example k in A's convention, on ranks both accept, its values representable in both backends' formats."""
    ranks = tuple(r for r in a.convention.ranks if r in b.convention.ranks)
    if not ranks:
        raise InputError(f"no input rank both accept ({a.convention.ranks} vs {b.convention.ranks})")
    return sharded_case(replace(a.convention, ranks=ranks), pa, split, w,
                        case_seed(run_seed, f"{a.name}|{b.name}", w, split, dtype, k))


def _rounded(i: ShardedInputs, p) -> ShardedInputs:
    """`i` with its values rounded to what a backend of precision `p` holds (exact when both share formats)."""
    data = lambda arrays: tuple(round_to(v, p.dtype).astype(np.float64) for v in arrays)  # noqa: E731
    stats = lambda v: None if v is None else round_to(v, p.stats).astype(np.float64)  # noqa: E731
    running = None if i.running is None else RunningStats(stats(i.running.mean), stats(i.running.var), i.running.count)
    return replace(i, shards=data(i.shards), dys=None if i.dys is None else data(i.dys), gamma=stats(i.gamma),
                   beta=stats(i.beta), running=running)


def target_inputs(i: ShardedInputs, a, b, pb) -> tuple[ShardedInputs, int, int, object]:
    """B's inputs for A's example (channels moved to B's axis, momentum and eps translated and held in B's
    formats), A's and B's normalized channel axes, and the translation."""
    t = translate(a.convention, b.convention, momentum=i.momentum, eps=i.eps)
    momentum = t.momentum
    if momentum is None and b.convention.tracks_running_stats and not b.convention.cumulative_average:
        momentum = new_batch_weight(b.convention, 0.1)  # A's cumulative average: a stand-in the residual names
    ndim = np.ndim(i.shards[0])
    axis_a = channel_axis(ndim, i.axis)
    axis_b = channel_axis(ndim, b.convention.channel_axis) if ndim > 2 else axis_a
    move = lambda arrays: None if arrays is None else tuple(np.moveaxis(v, axis_a, axis_b) for v in arrays)  # noqa: E731
    running = i.running if b.convention.tracks_running_stats else None
    ib = replace(i, shards=move(i.shards), dys=move(i.dys), axis=b.convention.channel_axis if ndim > 2 else i.axis,
                 eps=pb.attribute(t.eps), momentum=pb.attribute(momentum), running=running)
    return _rounded(ib, pb), axis_a, axis_b, t


def _record(backend, inputs: ShardedInputs, split: Split, dtype: str):
    """The first known replica record that covers this example of `backend`, or None."""
    seen = None if inputs.running is None else inputs.running.count
    return next((r for r in replica_discrepancies_for(backend)
                 if r.covers(backend.name, split.value, inputs.world_size, dtype, seen)), None)


def side_expected(backend, inputs: ShardedInputs, observed: dict, split: Split, dtype: str, precision):
    """The oracle of `backend` on its inputs (`expected_step`), the quantities a covering record names replaced
    by the recorded behaviour (replica_battery.recorded_values); with the record's id ("" when none)."""
    out = dict(expected_step(inputs, backend.convention, backend.replica, precision, backward=inputs.dys is not None))
    record = _record(backend, inputs, split, dtype)
    if record is None:
        return out, ""
    recorded = recorded_values(record, observed, inputs, backend, precision)
    out.update({q: recorded[q] for q in record.quantities if q in recorded and q in out})
    return out, record.id


def _moved(e, axis_from: int, axis_to: int):
    """An Expected of x's shape with its channel axis moved back to A's."""
    move = lambda v: None if v is None else np.moveaxis(np.broadcast_to(v, e.value.shape), axis_from, axis_to)  # noqa: E731
    return replace(e, value=move(e.value), bound=move(e.bound), bound_one_pass=move(e.bound_one_pass), ill=move(e.ill),
                   ill_one_pass=move(e.ill_one_pass), nonfinite_ok=move(e.nonfinite_ok))


class _SideFailed(Exception):
    """One backend of the pair raised: its name and the exception."""

    def __init__(self, backend, error: BaseException):
        super().__init__(f"{backend.name}: {_one_line(error)}")
        self.backend, self.error = backend, error


def _step(backend, inputs: ShardedInputs, dtype: str, device: str) -> dict:
    try:
        return observed_quantities(backend.step(sharded_request(inputs, dtype, device)), inputs)
    except Exception as e:  # noqa: BLE001 - reported with the side's name
        raise _SideFailed(backend, e) from e


def run_setting(a, b, world_size: int, split: Split, dtype: str, device: str, examples: int,
                run_seed: int, faulted: set | None = None) -> ReplicaPairResult:
    """One pair at one world size and split: `examples` examples through both, every common quantity compared.
    A side whose replica crashed or timed out is added to `faulted` (its later settings are not run)."""
    result = ReplicaPairResult(a.name, b.name, world_size, split.value, dtype, device)
    start = time.perf_counter()
    pa, pb = declared_precision(a, dtype, device), declared_precision(b, dtype, device)
    rows: dict[str, PairRow] = {}
    try:
        for k in range(examples):
            try:
                ia = _rounded(_draw(a, b, pa, split, world_size, dtype, run_seed, k), pb)
                ib, axis_a, axis_b, t = target_inputs(ia, a, b, pb)
                check_replica_request(a, sharded_request(ia, dtype, device))
                check_replica_request(b, sharded_request(ib, dtype, device))
            except ValueError as e:  # InputError or a translation refused: the setting cannot be compared
                result.status, result.reason = "not comparable", _one_line(e)
                return result
            try:
                oa, ob = _step(a, ia, dtype, device), _step(b, ib, dtype, device)
                (ea, ra), (eb, rb) = (side_expected(a, ia, oa, split, dtype, pa),
                                      side_expected(b, ib, ob, split, dtype, pb))
            except _SideFailed as e:  # a side's failure ends this setting, not the pairs
                result.status, result.reason = "error", f"{e} [{describe(ia)}]"
                if faulted is not None and isinstance(e.error, (ReplicaCrash, ReplicaTimeout)):
                    faulted.add(e.backend.name)
                return result
            except Exception as e:  # noqa: BLE001 - the oracle or a record could not be applied
                result.status, result.reason = "error", f"{_one_line(e)} [{describe(ia)}]"
                return result
            back = lambda v: np.moveaxis(v, axis_b, axis_a) if np.ndim(v) == np.ndim(ia.shards[0]) else v  # noqa: E731
            n = sum(np.size(s) for s in ia.shards) // np.shape(ia.shards[0])[axis_a]
            steps = 1 + (ia.running.count if ia.running is not None else 0)
            for q in sorted(set(oa) & set(ob) & set(ea) & set(eb)):
                ebq = _moved(eb[q], axis_b, axis_a) if np.ndim(eb[q].value) == np.ndim(ia.shards[0]) else eb[q]
                verdict, rel = _compare(q, oa[q], back(ob[q]), ea[q], ebq)
                row = rows.setdefault(q, PairRow(a.name, b.name, STEP, q, MATCHES))
                row.examples += 1
                if (_RANK[verdict], rel) >= (_RANK[row.verdict], row.max_relative):
                    row.verdict, row.max_relative, row.worst_input = verdict, rel, describe(ia)
                    recorded = [f"{name}{RECORDED_MARK}{rid}" for name, rid in ((a.name, ra), (b.name, rb)) if rid]
                    row.residuals = "; ".join(filter(None, [_residual_text(t, q, n, steps)] + recorded))
    finally:
        result.rows = [rows[q] for q in sorted(rows)]
        result.seconds = time.perf_counter() - start
    return result


def run_pair(a, b, examples: int, run_seed: int, world_sizes=DEFAULT_WORLD_SIZES,
             faulted: set | None = None) -> list[ReplicaPairResult]:
    """One pair at every world size, unequal (where both can express it) then equal; a setting after a side's
    replica crashed or timed out (in `faulted`) is not comparable, not run again."""
    device, dtype, why = common_setting(a, b)
    if device is None:
        return [ReplicaPairResult(a.name, b.name, 0, "-", "-", "-", "not comparable", why)]
    faulted = set() if faulted is None else faulted
    out = []
    for w in world_sizes:
        for split in SPLITS:
            down = [x.name for x in (a, b) if x.name in faulted]
            out.append(ReplicaPairResult(a.name, b.name, w, split.value, dtype, device, "not comparable",
                                         f"not run: {down[0]} crashed or timed out earlier in the pairs")
                       if down else run_setting(a, b, w, split, dtype, device, examples, run_seed, faulted))
    return out


def run_replica_pairs(backends, examples: int, seed: int, world_sizes=DEFAULT_WORLD_SIZES,
                      progress=None, stop=None) -> list[ReplicaPairResult]:
    """Every unordered pair of the synchronized backends among `backends` (in their order); `stop` (a
    threading.Event) set ends it before the next pair."""
    sync = synchronized(backends)
    pairs = [(a, b) for k, a in enumerate(sync) for b in sync[k + 1:]]
    out: list[ReplicaPairResult] = []
    faulted: set[str] = set()
    for j, (a, b) in enumerate(pairs, 1):
        if stop is not None and stop.is_set():
            break
        if progress:
            progress(f"[replica pair {j}/{len(pairs)}] {a.name} vs {b.name}")
        out += run_pair(a, b, examples, seed, world_sizes, faulted)
    return out


def failures(results) -> list[str]:
    """A setting that raised, and an UNEXPECTED difference: why the pairs do not conform."""
    out = []
    for p in results:
        at = f"{p.source} vs {p.target} W={p.world_size} {p.split} {p.dtype}"
        if p.status == "error":
            out.append(f"{at}: error: {p.reason}")
        out += [f"{at} {r.quantity}: {r.verdict}" + (f" ({r.residuals})" if r.residuals else "")
                for r in p.rows or [] if r.verdict == UNEXPECTED]
    return out


__all__ = ["MATCHES", "PREDICTED", "ReplicaPairResult", "UNEXPECTED", "common_setting", "failures", "pair_world_sizes", "run_pair",
           "run_replica_pairs", "run_setting", "side_expected", "target_inputs"]
