"""Backends against each other: the same inputs through two APIs after translating their parameters.

For a pair (A, B), cases are drawn in A's convention, `spec.translate` maps momentum and eps to B's, the
channel axis is moved where B wants another, both run, and every quantity both return is compared:

    matches after translation    |a - b| within the sum of both error-model bounds
    differs as the spec predicts |a - b| is the difference between the oracle under A's and under B's
                                 convention (within the same bounds): an irreducible convention difference,
                                 named by the translation's residual that affects the quantity (where a
                                 known discrepancy covers a side's case, its recorded behaviour stands in
                                 for the declared one, and the row names the entry)
    UNEXPECTED                   neither: one of the backends, or the translation, is wrong

Each row keeps the largest relative difference seen and the residual's predicted size for that case's
batch, so that someone porting a model sees what to change and how much it matters at their batch size.

`judge_case` is the comparison of one case, shared by `run_pair` (both backends in one process) and
`bnconf merge` (conformance/pair_outputs.py: each side's outputs and oracle values saved by its own run, in
another environment): a `Side` is what one backend returned and what its convention predicts, in the case's
channel layout.
"""

import zlib
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from ..adapters.protocol import channel_axes, declared_precision, unavailable
from ..spec import Inputs, Mode, expected, translate
from ..spec.conventions import new_batch_weight
from ..spec.oracle import channel_axis
from .battery import describe, run_seeded
from .cases import case_inputs
from .discrepancies import covering
from .engine import prepare, request
from .known import discrepancies_for

MODES = (Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD)
MATCHES, PREDICTED, UNEXPECTED = "matches after translation", "differs as the spec predicts", "UNEXPECTED difference"
_RANK = {MATCHES: 0, PREDICTED: 1, UNEXPECTED: 2}


@dataclass
class PairRow:
    source: str
    target: str
    mode: str
    quantity: str
    verdict: str
    max_relative: float = 0.0  # max |a - b| / max |a| over the worst case
    residuals: str = ""  # the translation's residuals that name this quantity, with their predicted size
    worst_input: str = ""
    examples: int = 0


@dataclass
class PairResult:
    source: str
    target: str
    mode: str
    status: str  # "ran", "not comparable", "error"
    reason: str = ""
    rows: list[PairRow] | None = None


@dataclass(frozen=True)
class Side:
    """One backend's side of a case, every array in the case's channel layout: per quantity what it returned
    (`observed`) and what its convention predicts (`expected`: anything with `value`, `bound` and `ill` arrays,
    e.g. spec.Expected); `record` names the known discrepancy that stood in for the declared convention."""

    name: str
    observed: dict
    expected: dict
    record: str | None = None


@dataclass(frozen=True)
class _View:
    """A's convention restricted to the ranks both backends accept, for drawing cases."""

    convention: object
    ranks: tuple[int, ...]
    channel_axes: tuple[int, ...]


def representatives(backends, device: str = "cpu") -> list:
    """One backend per convention, in the given order, that runs on `device` now."""
    seen, out = set(), []
    for b in backends:
        if b.convention.name not in seen and not unavailable(b, device):
            seen.add(b.convention.name)
            out.append(b)
    return out


def _common_dtype(a, b) -> str | None:
    return next((d for d in ("float64", "float32") if d in a.dtypes and d in b.dtypes), None)


def _target_inputs(i: Inputs, a, b, mode: Mode) -> tuple[Inputs, int, object] | None:
    """B's inputs for A's case, B's channel axis, and the translation; None where B cannot take the case."""
    t = translate(a.convention, b.convention, momentum=i.momentum, eps=i.eps)
    running = i.running if b.convention.tracks_running_stats else None
    if mode is not Mode.TRAIN_FORWARD and running is None and i.running is not None:
        return None  # B would need statistics it does not keep
    if mode is Mode.EVAL_FORWARD and running is None and not b.convention.untracked_eval_uses_batch_stats:
        return None
    momentum = t.momentum
    if momentum is None and not b.convention.cumulative_average:  # A's cumulative average: B has none
        momentum = new_batch_weight(b.convention, 0.1)  # a stand-in; the residual names the difference
    ndim = i.x.ndim
    axis_a = channel_axis(ndim, i.axis)
    allowed = {channel_axis(ndim, ax): ax for ax in channel_axes(b)}  # normalized -> as B names it
    axis_b = axis_a if axis_a in allowed else next(iter(allowed))
    move = (lambda v: None if v is None else np.moveaxis(v, axis_a, axis_b))  # noqa: E731
    target_axis = allowed[axis_b]
    return replace(i, x=move(i.x), dy=move(i.dy), axis=target_axis, momentum=momentum, running=running), axis_b, t


def _residual_text(t, quantity: str, n: int, steps: int) -> str:
    parts = []
    for r in t.residuals:
        if quantity in r.affects:
            size = t.residual_size(r, n, steps=steps)
            parts.append(r.kind.value + ("" if size is None else f" (predicted {size:.3g} relative at n={n})"))
    return "; ".join(parts)


def _compare(quantity, oa, ob, ea, eb):
    """(verdict, max relative difference) for one quantity of one case."""
    ill = np.broadcast_to(ea.ill | eb.ill, oa.shape)
    tol = ea.bound + eb.bound
    diff = np.abs(oa - ob)
    scale = max(float(np.max(np.abs(oa), initial=0.0)), np.finfo(np.float64).tiny)
    rel = float(np.max(np.where(ill, 0.0, diff), initial=0.0)) / scale
    with np.errstate(invalid="ignore"):
        nan_a, nan_b = np.isnan(oa), np.isnan(ob)
        nan_as_specified = (nan_a == np.isnan(ea.value)) & (nan_b == np.isnan(eb.value))
        same = ill | (diff <= tol) | (oa == ob) | (nan_a & nan_b)
        predicted = ill | (np.abs((oa - ob) - (ea.value - eb.value)) <= tol) | ((nan_a | nan_b) & nan_as_specified)
    if np.all(same):
        return MATCHES, rel
    return (PREDICTED if np.all(predicted) else UNEXPECTED), rel


def judge_case(rows: dict, mode: str, a: Side, b: Side, t, n: int, steps: int, worst_input: str) -> None:
    """Compare every quantity both sides returned and both conventions predict, counting the case in `rows`
    (quantity -> PairRow, filled in place): a row keeps its worst verdict, the largest relative difference
    under it, that case's input and the translation `t`'s residuals that name the quantity (their predicted
    size at n values per channel after `steps` steps; no residuals where `t` is None)."""
    for q in sorted(set(a.observed) & set(b.observed) & set(a.expected) & set(b.expected)):
        verdict, rel = _compare(q, a.observed[q], b.observed[q], a.expected[q], b.expected[q])
        row = rows.setdefault(q, PairRow(a.name, b.name, mode, q, MATCHES))
        row.examples += 1
        if (_RANK[verdict], rel) >= (_RANK[row.verdict], row.max_relative):
            row.verdict, row.max_relative, row.worst_input = verdict, rel, worst_input
            recorded = [f"{side.name} as recorded in {side.record}" for side in (a, b) if side.record]
            residuals = "" if t is None else _residual_text(t, q, n, steps)
            row.residuals = "; ".join(filter(None, [residuals] + recorded))


def _expected(backend, mode: Mode, i: Inputs, dtype: str, device: str, precision):
    """The oracle's values for `backend` on `i`: its declared semantics, or, where a known discrepancy
    covers the case, the recorded behaviour (its id is returned with them)."""
    entry = covering(discrepancies_for(backend), backend.name, mode, dtype, device, i)
    if entry is None:
        return expected(mode, i, backend.convention, precision), None
    # the record applied as in the battery: channels it claims nothing about make no claim here either
    return entry.apply(i, {}, backend.convention, precision).expected(mode), entry.id


def moved(v, source: int, destination: int, rank: int):
    """A quantity of one side in the other side's channel layout: an array of x's `rank` has its channel axis
    moved from `source` to `destination`; per-channel ones are unchanged."""
    return np.moveaxis(v, source, destination) if np.ndim(v) == rank else v


def moved_expected(e, source: int, destination: int, rank: int):
    """`e` (spec.Expected) with value, bound and ill (broadcast to the value's shape) in the other layout."""
    ill = np.broadcast_to(e.ill, np.shape(e.value))
    return replace(e, value=moved(e.value, source, destination, rank), bound=moved(e.bound, source, destination, rank),
                   ill=moved(ill, source, destination, rank))


def case_size(i: Inputs) -> tuple[int, int]:
    """(values per channel, training steps the running statistics have seen after this one)."""
    return i.x.size // i.x.shape[i.axis], 1 + (i.running.count if i.running is not None else 0)


def run_pair(a, b, mode: Mode, examples: int, run_seed: int, device: str = "cpu") -> PairResult:
    result = PairResult(a.name, b.name, mode.value, "ran")
    dtype = _common_dtype(a, b)
    ranks = tuple(sorted(set(getattr(a, "ranks", a.convention.ranks)) & set(getattr(b, "ranks", b.convention.ranks))))
    why = ("no common dtype" if dtype is None else "no common input rank" if not ranks
           else f"{mode.value} not supported by both" if mode not in a.modes or mode not in b.modes else "")
    if why:
        result.status, result.reason = "not comparable", why
        return result
    rows: dict[str, PairRow] = {}
    errors: list[str] = []
    pa, pb = declared_precision(a, dtype, device), declared_precision(b, dtype, device)
    view = _View(a.convention, ranks, channel_axes(a))

    @seed(run_seed * 1_000_003 + zlib.crc32(f"{a.name}|{b.name}|{mode.value}".encode()))
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case_inputs(view, mode, dtype))
    def explore(i):
        i = prepare(prepare(i, pa), pb)  # values both backends' formats hold
        try:
            target = _target_inputs(i, a, b, mode)
        except ValueError as e:  # a case the translation refuses: reported, the pair goes on
            errors.append(f"translation: {e} [{describe(i)}]")
            return
        if target is None:
            return
        ib, axis_b, t = target
        try:
            oa = a.run(mode, request(i, dtype, device)).quantities()
            ob = b.run(mode, request(ib, dtype, device)).quantities()
            (ea, ra), (eb, rb) = _expected(a, mode, i, dtype, device, pa), _expected(b, mode, ib, dtype, device, pb)
        except Exception as e:  # reported with the input; the pair goes on
            errors.append(f"{type(e).__name__}: {e} [{describe(i)}]")
            return
        axis_a = channel_axis(i.x.ndim, i.axis)
        rank = i.x.ndim
        side_b = Side(b.name, {q: moved(v, axis_b, axis_a, rank) for q, v in ob.items()},
                      {q: moved_expected(e, axis_b, axis_a, rank) for q, e in eb.items()}, rb)
        judge_case(rows, mode.value, Side(a.name, oa, ea, ra), side_b, t, *case_size(i), describe(i))

    run_seeded(explore)
    result.rows = sorted(rows.values(), key=lambda r: r.quantity)
    if errors:
        result.status, result.reason = "error", f"{len(errors)} case(s) raised; first: {errors[0]}"
    return result


def run_matrix(backends, examples: int, run_seed: int, device: str = "cpu", progress=None,
               on_pair=None) -> list[PairResult]:
    """Every unordered pair of representatives (one backend per convention), in every comparable mode;
    `on_pair(result)` sees each result as it arrives."""
    reps = representatives(backends, device)
    pairs = [(a, b) for k, a in enumerate(reps) for b in reps[k + 1:]]
    results = []
    for j, (a, b) in enumerate(pairs, 1):
        if progress:
            progress(f"[pair {j}/{len(pairs)}] {a.name} vs {b.name}")
        for mode in MODES:
            try:
                results.append(run_pair(a, b, mode, examples, run_seed, device))
            except Exception as e:  # one pair's failure never loses the others
                results.append(PairResult(a.name, b.name, mode.value, "error", f"{type(e).__name__}: {e}"))
            if on_pair:
                on_pair(results[-1])
    return results
