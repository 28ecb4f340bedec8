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
"""

import zlib
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from ..adapters.protocol import channel_axes, declared_precision, unavailable
from ..spec import Inputs, Mode, expected, translate
from ..spec.conventions import new_batch_weight
from ..spec.oracle import channel_axis
from .battery import describe, import_independent_draws
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


def _expected(backend, mode: Mode, i: Inputs, dtype: str, device: str, precision):
    """The oracle's values for `backend` on `i`: its declared semantics, or, where a known discrepancy
    covers the case, the recorded behaviour (its id is returned with them)."""
    entry = covering(discrepancies_for(backend), backend.name, mode, dtype, device, i)
    if entry is None:
        return expected(mode, i, backend.convention, precision), None
    # the record applied as in the battery: channels it claims nothing about make no claim here either
    return entry.apply(i, {}, backend.convention, precision).expected(mode), entry.id


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
        back = lambda v: np.moveaxis(v, axis_b, channel_axis(i.x.ndim, i.axis)) if np.ndim(v) == i.x.ndim else v  # noqa: E731
        n = i.x.size // i.x.shape[i.axis]
        steps = 1 + (i.running.count if i.running is not None else 0)
        for q in sorted(set(oa) & set(ob) & set(ea) & set(eb)):
            ebq = replace(eb[q], value=back(eb[q].value), bound=back(eb[q].bound), ill=back(np.broadcast_to(eb[q].ill, eb[q].value.shape)))
            verdict, rel = _compare(q, oa[q], back(ob[q]), ea[q], ebq)
            row = rows.setdefault(q, PairRow(a.name, b.name, mode.value, q, MATCHES))
            row.examples += 1
            if (_RANK[verdict], rel) >= (_RANK[row.verdict], row.max_relative):
                row.verdict, row.max_relative, row.worst_input = verdict, rel, describe(i)
                recorded = [f"{name} as recorded in {rid}" for name, rid in ((a.name, ra), (b.name, rb)) if rid]
                row.residuals = "; ".join(filter(None, [_residual_text(t, q, n, steps)] + recorded))

    with import_independent_draws():
        explore()
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
