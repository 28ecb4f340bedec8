"""Naming the mistake behind a failure: competing hypotheses, each a model with its own error bound.

A *hypothesis* is one known mistake written as data (`Hypothesis`): its name, the quantities it can explain
in each mode, and how it turns (inputs, convention, precision) into what an implementation that makes it
returns: another convention (`conventions.CONVENTION_MISTAKES`), another precision (a one-pass variance,
arithmetic or accumulation in half precision, eps or momentum held in float32), other inputs (gamma and beta
swapped or not applied, eval normalizing with the batch's statistics) or another standard quantity in an
output (dbeta as a mean, saved_var holding 1/sqrt(var + eps), ...). Every model is `expect.expected` with the
changed convention, precision or inputs, so its bound comes from the same error model as the declared one's.

The rule (SPEC.md section 4.9), over the failing cases of a quantity (or of one call):

  explains    under the hypothesis every checked element lies within its bound (error/bound <= 1), non-finite
              values agree wherever it has a bound, it checks at least one element, and no quantity that passed
              under the declared model falls outside its bound under it (that quantity contradicts it);
  named       of those that explain, the most specific: the smallest spread, the sum over the compared elements
              of log(max(TYPICAL * bound, |error|)), the quantity's scale where the model has no bound: a model
              whose bound is wide explains a lot but predicts little, and errors close to a worst-case bound
              count against it;
  reported    its residual (max error/bound under it) and the runner-up (the next hypothesis, whether or not
              it explains, with its residual); "unexplained" when none explains, naming the closest.

`judge` compares one call's outputs with the declared model (`verdict.comparisons`) and explains its failing
quantities by the same rule: one hypothesis for all of them, else one per quantity.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .checks import InputError
from .conventions import CONVENTION_MISTAKES, Convention, ConventionMistake, Variance
from .error_model import Precision, VarianceAlgorithm
from .expect import STATE, Expected, Inputs, Mode, expected, exactly
from .formats import float_format
from .oracle import channels_first, variance_factor
from .verdict import (
    Comparison,
    Verdict,
    _nonfinite_mismatch,
    _ratios,
    comparisons,
    expected_in_format,
    quantity_format,
)

Case = tuple[Inputs, dict]  # (inputs as prepared for the backend, its outputs as float64 arrays)

TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
EVAL = (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD)
HALF = ("float16", "bfloat16")


# ---------------------------------------------------------------- hypotheses as data


@dataclass(frozen=True)
class Model:
    """What an implementation making one mistake returns: per quantity, the value and its bounds."""

    expected: dict[str, Expected]
    precision: Precision  # the precision the model rounds in (the formats quantities come back in)


def _same(value, *_):
    return value


@dataclass(frozen=True)
class Hypothesis:
    """One candidate mistake. `scope` pairs each mode with the quantities the mistake changes there (and so can
    explain); `convention` and `precision` map the declared ones to the mistake's, None where the mistake is
    the declared behaviour itself (it cannot explain a failure); `inputs(inputs, convention, precision)` gives
    the inputs the mistaken implementation effectively used, None where it changes nothing for this case;
    `outputs(mode, inputs, convention, precision, expected)` replaces quantities of the model by others."""

    name: str
    verdict: Verdict
    scope: tuple[tuple[Mode, frozenset[str]], ...]
    convention: Callable[[Convention], Convention | None] = _same
    precision: Callable[[Precision], Precision | None] = _same
    inputs: Callable[[Inputs, Convention, Precision], Inputs | None] = _same
    outputs: Callable[..., dict[str, Expected]] | None = None

    def covers(self, mode: Mode) -> frozenset[str]:
        """The quantities this mistake changes in `mode`."""
        return next((q for m, q in self.scope if m is mode), frozenset())

    def applies(self, mode: Mode, convention: Convention, precision: Precision) -> bool:
        """Whether the mistake changes anything in `mode` for this declaration."""
        changed = self.convention(convention) is not None and self.precision(precision) is not None
        return bool(self.covers(mode)) and changed

    def model(self, mode: Mode, inputs: Inputs, convention: Convention, precision: Precision) -> Model | None:
        """The mistaken implementation's expected outputs for one case; None where the mistake changes nothing
        for it or the model is undefined there (`expected` raised InputError, e.g. an unbiased variance at n = 1)."""
        c, p = self.convention(convention), self.precision(precision)
        i = None if c is None or p is None else self.inputs(inputs, c, p)
        if i is None:
            return None
        try:
            exp = expected(mode, i, c, p)
            return Model(self.outputs(mode, i, c, p, exp) if self.outputs else exp, p)
        except InputError:
            return None


def _scope(modes: Iterable[Mode], quantities: Iterable[str], state_in_eval: bool = False) -> tuple:
    """Each mode with the quantities among `quantities` it returns; the running statistics an eval call must leave
    unchanged only where `state_in_eval` (a mistake about the state, not about arithmetic)."""
    out = []
    for m in modes:
        qs = set(quantities) & set(m.quantities)
        if m in EVAL and not state_in_eval:
            qs -= set(STATE)
        if qs:
            out.append((m, frozenset(qs)))
    return tuple(out)


def _changed(inputs: Inputs, **changes) -> Inputs | None:
    """`inputs` with `changes`, or None when they change nothing (the mistake would be invisible)."""
    same = all(np.array_equal(getattr(inputs, k), v, equal_nan=True) if v is not None and getattr(inputs, k) is not None
               else getattr(inputs, k) is v for k, v in changes.items())
    return None if same else replace(inputs, **changes)


_FORWARD_OUT = frozenset({"y", "dx"})  # what gamma and beta reach: y, and dx through gamma
_STATISTICS = frozenset({"y", "saved_var", "saved_invstd", "running_var", "dx", "dgamma"})  # what the variance reaches
_EVERYTHING = frozenset(q for m in Mode for q in m.quantities)


def _from_convention(m: ConventionMistake) -> Hypothesis:
    """A convention mistake (SPEC.md section 2.2) as a hypothesis: the model computed under the changed record."""
    scope = _scope(tuple(Mode) if m.in_eval else TRAINING, m.quantities)
    return Hypothesis(m.name, Verdict.CONVENTION_DIFFERENCE, scope, convention=lambda c: m.change(c) if m.applies(c) else None)


# -------- precision


def _one_pass(p: Precision) -> Precision | None:
    return None if p.variance is VarianceAlgorithm.ONE_PASS else replace(p, variance=VarianceAlgorithm.ONE_PASS)


def _wider_than_data(fmt: str, p: Precision) -> bool:
    return p.dtype in HALF and float_format(fmt).precision > float_format(p.dtype).precision


def _arithmetic_in_half(p: Precision) -> Precision | None:
    """Every operation, statistics included, in the half-precision data format."""
    if not _wider_than_data(p.compute, p):
        return None
    return replace(p, compute=p.dtype, accumulate=p.dtype, stats=p.dtype)


def _accumulated_in_half(p: Precision) -> Precision | None:
    """The reductions' accumulators in the half-precision data format, the rest as declared."""
    return replace(p, accumulate=p.dtype) if _wider_than_data(p.accumulate, p) else None


def _attributes_in_float32(p: Precision) -> Precision | None:
    """eps and momentum held in float32 where the arithmetic is wider (float64) and declared them exact."""
    wider = float_format(p.compute).precision > float_format("float32").precision
    return replace(p, attributes="float32") if p.attributes is None and wider else None


# -------- outputs: another standard quantity, or a term left out


def _elementwise_roundoff(p: Precision) -> float:
    return float_format(p.compute).unit_roundoff


def _scaled(e: Expected, factor, u: float) -> Expected:
    """e times an exact per-element `factor`, the product rounded once: bound |factor| bound + u |product|."""
    value = e.value * factor
    return replace(e, value=value, bound=e.bound * np.abs(factor) + u * np.abs(value),
                   bound_one_pass=e.bound_one_pass * np.abs(factor) + u * np.abs(value))


@np.errstate(all="ignore")
def _divided(e: Expected, d: Expected, u: float) -> Expected:
    """e / d of two modelled quantities (shapes broadcast): first order, |e/d| (de/|e| + dd/|d|) (1 + 2 dd/|d|)
    plus one rounding; no bound where d is known to less than a quarter of itself or is 0."""
    value = e.value / d.value
    rel_d = d.bound / np.abs(d.value)
    rel_d1 = d.bound_one_pass / np.abs(d.value)

    def bound(be, rd):
        return (be / np.abs(d.value) + np.abs(value) * rd) * (1 + 2 * rd) + u * np.abs(value)

    ill = e.ill | ~(rel_d < 0.25)
    ill1 = e.ill_one_pass | ~(rel_d1 < 0.25)
    return replace(e, value=value, bound=bound(e.bound, rel_d), bound_one_pass=bound(e.bound_one_pass, rel_d1),
                   ill=np.broadcast_to(ill, value.shape), ill_one_pass=np.broadcast_to(ill1, value.shape))


def _one(like: Expected) -> Expected:
    """The exact constant 1 shaped like `like`."""
    return exactly(np.ones(like.value.shape), "1")


def _forward_statistics(inputs: Inputs, c: Convention, p: Precision) -> dict[str, Expected]:
    """The training forward's saved statistics of the same batch (mean, variance, 1/sqrt(var + eps)), modelled."""
    return expected(Mode.TRAIN_FORWARD, replace(inputs, running=None, dy=None), c, p)


def _values_per_channel(inputs: Inputs) -> int:
    return channels_first(np.asarray(inputs.x, dtype=np.float64), inputs.axis).shape[1]


def _per_channel(v: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against an array like `like` with channels on `axis`."""
    shape = [1] * like.ndim
    shape[axis % like.ndim] = -1
    return np.reshape(v, shape)


def _saved_var_holds(source: Callable[[dict, Inputs, Convention, Precision], Expected]):
    """An `outputs` transform: saved_var replaced by another statistic of the model."""
    return lambda mode, i, c, p, exp: {**exp, "saved_var": source(exp, i, c, p)}


def _saved_invstd_holds(source: Callable[[dict, Inputs, Convention, Precision], Expected]):
    return lambda mode, i, c, p, exp: {**exp, "saved_invstd": source(exp, i, c, p)}


def _std(exp, i, c, p) -> Expected:
    """sqrt(var + eps) = 1 / saved_invstd."""
    return _divided(_one(exp["saved_invstd"]), exp["saved_invstd"], float_format(p.stats).unit_roundoff)


def _invstd(exp, i, c, p) -> Expected:
    return exp["saved_invstd"]


def _variance(exp, i, c, p) -> Expected:
    return exp["saved_var"]


def _unbiased(exp, i, c, p) -> Expected:
    """saved_var * n / (n - 1), the Bessel-corrected variance (a biased-normalizing convention)."""
    n = _values_per_channel(i)
    if c.normalize_with is not Variance.BIASED or n < 2:
        raise InputError("no unbiased variance to hold")
    return _scaled(exp["saved_var"], variance_factor(Variance.UNBIASED, n, c.bessel_divisor_min),
                   float_format(p.stats).unit_roundoff)


def _dbeta_mean(mode, i, c, p, exp) -> dict[str, Expected]:
    """dbeta = sum(dy) / n instead of sum(dy)."""
    return {**exp, "dbeta": _scaled(exp["dbeta"], 1.0 / _values_per_channel(i), float_format(p.stats).unit_roundoff)}


def _dgamma_without_invstd(mode, i, c, p, exp) -> dict[str, Expected]:
    """dgamma = sum(dy (x - mean)) = sum(dy z) / s instead of sum(dy z), s = 1/sqrt(var + eps)."""
    s = _forward_statistics(i, c, p)["saved_invstd"]
    return {**exp, "dgamma": _divided(exp["dgamma"], s, float_format(p.stats).unit_roundoff)}


@np.errstate(all="ignore")
def _dx_without_mean_dy(mode, i, c, p, exp) -> dict[str, Expected]:
    """dx = gamma s (dy - z mean(dy z)): the declared dx plus gamma s mean(dy), s = 1/sqrt(var + eps) modelled."""
    s = _forward_statistics(i, c, p)["saved_invstd"]
    dx = exp["dx"]
    axis = i.axis
    gamma = np.ones(len(s.value)) if i.gamma is None else np.asarray(i.gamma, dtype=np.float64)
    mean_dy = channels_first(np.asarray(i.dy, dtype=np.float64), axis).mean(axis=1)
    term = _per_channel(gamma * s.value * mean_dy, dx.value, axis)
    d_term = _per_channel(np.abs(gamma * mean_dy) * s.bound, dx.value, axis)
    u = _elementwise_roundoff(p)
    value = dx.value + term
    bound = dx.bound + d_term + 4 * u * np.abs(term) + u * np.abs(value)
    return {**exp, "dx": replace(dx, value=value, bound=bound, bound_one_pass=dx.bound_one_pass + (bound - dx.bound))}


def _as_training(mode, i, c, p, exp) -> dict[str, Expected]:
    """An eval call computed as a training call: normalized with the batch's statistics."""
    train = Mode.TRAIN_FORWARD if mode is Mode.EVAL_FORWARD else Mode.TRAIN_BACKWARD
    alt = expected(train, replace(i, running=None), c, p)
    return {**exp, **{q: e for q, e in alt.items() if q in exp}}


def _running_unchanged(mode, i, c, p, exp) -> dict[str, Expected]:
    """A training step that leaves the running statistics as given, bit for bit."""
    if i.running is None:
        raise InputError("no running statistics")
    return {**exp, **{q: exactly(v, q) for q, v in (("running_mean", i.running.mean), ("running_var", i.running.var))}}


def _updated_in_eval(mode, i, c, p, exp) -> dict[str, Expected]:
    """An eval call that updates the running statistics as a training step would."""
    train = expected(Mode.TRAIN_FORWARD, replace(i, dy=None), c, p)
    return {**exp, **{q: train[q] for q in STATE if q in exp}}


@np.errstate(all="ignore")
def _global_statistics(mode, i, c, p, exp) -> dict[str, Expected]:
    """y normalized with the statistics of the whole tensor (every channel together), then the per-channel affine:
    z from the model of a one-channel batch, y = gamma z + beta rounded (bound |gamma| dz + 2u(|gamma z| + |beta|)
    + u_out |y|)."""
    x = np.asarray(i.x, dtype=np.float64)
    z = expected(Mode.TRAIN_FORWARD, Inputs(x=x.reshape(-1, 1), axis=1, eps=i.eps), c, p)["y"]
    channels = x.shape[i.axis]
    gamma = _per_channel(np.ones(channels) if i.gamma is None else np.asarray(i.gamma, float), x, i.axis)
    beta = _per_channel(np.zeros(channels) if i.beta is None else np.asarray(i.beta, float), x, i.axis)
    zv, dz, dz1 = (a.reshape(x.shape) for a in (z.value, z.bound, z.bound_one_pass))
    y = gamma * zv + beta
    u, u_out = _elementwise_roundoff(p), float_format(p.dtype).unit_roundoff
    rest = 2 * u * (np.abs(gamma * zv) + np.abs(beta)) + u_out * np.abs(y)
    ill, ill1 = (np.broadcast_to(a, z.value.shape).reshape(x.shape) for a in (z.ill, z.ill_one_pass))
    return {**exp, "y": replace(exp["y"], value=y, bound=np.abs(gamma) * dz + rest,
                                bound_one_pass=np.abs(gamma) * dz1 + rest, ill=ill, ill_one_pass=ill1)}


def _biased_normalizing(c: Convention) -> Convention | None:
    return c if c.normalize_with is Variance.BIASED else None


# -------- the list


ONE_PASS = Hypothesis("one-pass E[x^2] - E[x]^2 variance", Verdict.UNSTABLE_ALGORITHM, _scope(TRAINING, _STATISTICS),
                      precision=_one_pass)
ARITHMETIC_IN_HALF = Hypothesis("arithmetic in half precision", Verdict.PRECISION_DIFFERENCE,
                                _scope(tuple(Mode), _EVERYTHING), precision=_arithmetic_in_half)
ACCUMULATED_IN_HALF = Hypothesis("statistics accumulated in half precision", Verdict.PRECISION_DIFFERENCE,
                                 _scope((*TRAINING, Mode.EVAL_BACKWARD), _EVERYTHING), precision=_accumulated_in_half)
EPS_IN_FLOAT32 = Hypothesis("eps held in float32", Verdict.PRECISION_DIFFERENCE,
                            _scope(tuple(Mode), {"y", "saved_invstd", "dx", "dgamma"}), precision=_attributes_in_float32,
                            inputs=lambda i, c, p: _changed(i, eps=p.attribute(i.eps)))
MOMENTUM_IN_FLOAT32 = Hypothesis("momentum held in float32", Verdict.PRECISION_DIFFERENCE,
                                 _scope((Mode.TRAIN_FORWARD,), STATE), precision=_attributes_in_float32,
                                 inputs=lambda i, c, p: _changed(i, momentum=p.attribute(i.momentum)))
GAMMA_BETA_SWAPPED = Hypothesis("gamma and beta swapped", Verdict.NON_CONFORMANT, _scope(tuple(Mode), _FORWARD_OUT),
                                inputs=lambda i, c, p: None if i.gamma is None else _changed(i, gamma=i.beta, beta=i.gamma))
AFFINE_IGNORED = Hypothesis("gamma and beta not applied", Verdict.NON_CONFORMANT, _scope(tuple(Mode), _FORWARD_OUT),
                            inputs=lambda i, c, p: None if i.gamma is None else _changed(i, gamma=None, beta=None))
CHANNEL_AXIS_IGNORED = Hypothesis("statistics over every channel together (channel axis ignored)", Verdict.NON_CONFORMANT,
                                  _scope((Mode.TRAIN_FORWARD,), {"y"}), outputs=_global_statistics)
EVAL_BATCH_STATISTICS = Hypothesis("eval normalizes with the batch statistics", Verdict.NON_CONFORMANT,
                                   _scope(EVAL, {"y", "dx", "dgamma"}),
                                   inputs=lambda i, c, p: None if i.running is None else i, outputs=_as_training)
RUNNING_NOT_UPDATED = Hypothesis("running statistics not updated", Verdict.NON_CONFORMANT,
                                 _scope((Mode.TRAIN_FORWARD,), STATE), outputs=_running_unchanged)
RUNNING_UPDATED_IN_EVAL = Hypothesis("running statistics updated in eval", Verdict.NON_CONFORMANT,
                                     _scope(EVAL, STATE, state_in_eval=True), outputs=_updated_in_eval)
DBETA_MEAN = Hypothesis("dbeta as a mean (sum(dy) / n)", Verdict.NON_CONFORMANT,
                        _scope((Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD), {"dbeta"}), outputs=_dbeta_mean)
DGAMMA_WITHOUT_INVSTD = Hypothesis("dgamma missing its 1/sqrt(var + eps)", Verdict.NON_CONFORMANT,
                                   _scope((Mode.TRAIN_BACKWARD,), {"dgamma"}), outputs=_dgamma_without_invstd)
DX_WITHOUT_MEAN_DY = Hypothesis("dx without the mean(dy) term", Verdict.NON_CONFORMANT,
                                _scope((Mode.TRAIN_BACKWARD,), {"dx"}), outputs=_dx_without_mean_dy)
SAVED_VAR_INVSTD = Hypothesis("saved_var holds 1/sqrt(var + eps)", Verdict.NON_CONFORMANT,
                              _scope((Mode.TRAIN_FORWARD,), {"saved_var"}), outputs=_saved_var_holds(_invstd))
SAVED_VAR_STD = Hypothesis("saved_var holds sqrt(var + eps)", Verdict.NON_CONFORMANT,
                           _scope((Mode.TRAIN_FORWARD,), {"saved_var"}), outputs=_saved_var_holds(_std))
SAVED_VAR_UNBIASED = Hypothesis("saved_var holds the unbiased variance", Verdict.NON_CONFORMANT,
                                _scope((Mode.TRAIN_FORWARD,), {"saved_var"}), convention=_biased_normalizing,
                                outputs=_saved_var_holds(_unbiased))
SAVED_INVSTD_STD = Hypothesis("saved_invstd holds sqrt(var + eps)", Verdict.NON_CONFORMANT,
                              _scope((Mode.TRAIN_FORWARD,), {"saved_invstd"}), outputs=_saved_invstd_holds(_std))
SAVED_INVSTD_VAR = Hypothesis("saved_invstd holds the variance", Verdict.NON_CONFORMANT,
                              _scope((Mode.TRAIN_FORWARD,), {"saved_invstd"}), outputs=_saved_invstd_holds(_variance))

# In order of preference where two fit equally well (the same values and bounds).
HYPOTHESES: tuple[Hypothesis, ...] = (
    *(_from_convention(m) for m in CONVENTION_MISTAKES),
    GAMMA_BETA_SWAPPED, AFFINE_IGNORED, CHANNEL_AXIS_IGNORED, EVAL_BATCH_STATISTICS, RUNNING_NOT_UPDATED,
    RUNNING_UPDATED_IN_EVAL, DBETA_MEAN, DGAMMA_WITHOUT_INVSTD, DX_WITHOUT_MEAN_DY, SAVED_VAR_INVSTD, SAVED_VAR_STD,
    SAVED_VAR_UNBIASED, SAVED_INVSTD_STD, SAVED_INVSTD_VAR,
    EPS_IN_FLOAT32, MOMENTUM_IN_FLOAT32, ACCUMULATED_IN_HALF, ARITHMETIC_IN_HALF, ONE_PASS,
)
BY_NAME: dict[str, Hypothesis] = {h.name: h for h in HYPOTHESES}


# ---------------------------------------------------------------- how a model fits the observations


_TINY = float(np.finfo(np.float64).tiny)
_HUGE = float(np.finfo(np.float64).max)
# The error/bound a correct result typically stays under: the bounds are worst cases (a recursive summation's
# n - 1 roundings all in one direction), so errors much closer to them than this are themselves evidence.
TYPICAL = 1 / 16


@dataclass(frozen=True)
class Fit:
    """How a model fits observed values: the worst error/bound over the elements it checks (infinite where
    finiteness differs where it has a bound), how many it checks, and its spread: the sum over the compared
    elements of log(max(TYPICAL * bound, |error|)); where it has no bound, the log of the quantity's scale (the
    largest |observed| + |expected|), or of the largest float64 where finiteness differs too: how narrowly the model
    predicted them."""

    residual: float = 0.0
    checked: int = 0
    spread: float = 0.0

    def __add__(self, other: "Fit") -> "Fit":
        return Fit(max(self.residual, other.residual), self.checked + other.checked, self.spread + other.spread)

    @property
    def within(self) -> bool:
        """Every checked element within its bound and finiteness as predicted (NaN counts as outside)."""
        return self.residual <= 1.0


NO_FIT = Fit(float("inf"), 0, float("inf"))  # the model is undefined for the case, or misses the quantity


@np.errstate(all="ignore")
def fit(observed: np.ndarray, e: Expected, fmt: str, unbounded: np.ndarray | None = None) -> Fit:
    """Compare `observed` with the model `e` of a quantity returned in format `fmt`. Where the model has no
    bound (`e.ill`, or `unbounded`: e.g. a channel whose sums overflow) a non-finite value is no contradiction."""
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape != e.value.shape:
        return NO_FIT
    value = expected_in_format(observed, e, fmt)
    free = e.ill if unbounded is None else (e.ill | unbounded)
    mismatch = _nonfinite_mismatch(observed, value)
    if (mismatch & ~free).any():
        return NO_FIT
    finite = np.isfinite(observed) & np.isfinite(value)
    checked = finite & ~e.ill
    ratio = _ratios(observed[checked], value[checked], e.bound[checked])
    error = np.abs(observed - value)
    scale = float(np.max((np.abs(observed) + np.abs(value))[finite])) if finite.any() else 0.0
    width = np.where(checked, np.maximum(TYPICAL * e.bound, error), scale)
    spread = float(np.sum(np.log(np.maximum(width[finite], _TINY)))) + np.log(_HUGE) * int(mismatch.sum())
    return Fit(float(np.max(ratio)) if ratio.size else 0.0, int(checked.sum()), spread)


def _channels_unbounded(model: Model) -> np.ndarray | None:
    """Channels where some per-channel statistic of the model has no bound (e.g. its sums overflow): there a
    non-finite mean, too, is no contradiction."""
    masks = [np.asarray(e.ill) for e in model.expected.values() if e.value.ndim == 1]
    return np.logical_or.reduce(masks) if masks and len({m.shape for m in masks}) == 1 else None


def _fit_in(model: Model | None, q: str, observed: np.ndarray) -> Fit:
    if model is None or q not in model.expected:
        return NO_FIT
    e = model.expected[q]
    unbounded = _channels_unbounded(model) if e.value.ndim == 1 else None
    return fit(observed, e, quantity_format(q, model.precision), unbounded)


@dataclass
class _Evidence:
    """A hypothesis's fits, per quantity to explain (summed over the cases), and the quantities that passed under
    the declared model but not under it (they contradict it)."""

    fits: dict[str, Fit] = field(default_factory=dict)
    contradicted_by: set[str] = field(default_factory=set)


def _evidence(hypotheses: Sequence[Hypothesis], mode: Mode, cases: Sequence[Case], passing: Sequence[set[str]],
              convention: Convention, precision: Precision, quantities: Sequence[str]) -> dict[str, _Evidence]:
    """Per hypothesis: its fit of each of `quantities` it covers, summed over the cases that returned it, and which
    of a case's `passing` quantities (within the declared bounds) it puts outside its own (each model computed once
    per case)."""
    out = {h.name: _Evidence() for h in hypotheses}
    for (inputs, observed), passed in zip(cases, passing):
        for h in hypotheses:
            covered = h.covers(mode)
            qs = [q for q in quantities if q in covered and observed.get(q) is not None]
            witnesses = [q for q in passed if q in covered and q not in quantities and observed.get(q) is not None]
            if not qs:
                continue
            model = h.model(mode, inputs, convention, precision)
            ev = out[h.name]
            for q in qs:
                ev.fits[q] = ev.fits.get(q, Fit()) + _fit_in(model, q, observed[q])
            ev.contradicted_by.update(q for q in witnesses if not _fit_in(model, q, observed[q]).within)
    return out


def _passing(mode: Mode, cases: Sequence[Case], convention: Convention, precision: Precision) -> list[set[str]]:
    """Per case, the returned quantities the declared model checks and finds within their bounds."""
    out = []
    for inputs, observed in cases:
        try:
            declared = Model(expected(mode, inputs, convention, precision), precision)
        except InputError:
            out.append(set())
            continue
        fits = {q: _fit_in(declared, q, v) for q, v in observed.items() if v is not None}
        out.append({q for q, f in fits.items() if f.within and f.checked and not (q in STATE and mode in EVAL)})
    return out


# ---------------------------------------------------------------- the named mistake


def _fmt(ratio: float) -> str:
    return f"{ratio:.2g}"


@dataclass(frozen=True)
class Ranked:
    """One hypothesis's standing on a set of failures."""

    name: str
    fit: Fit
    contradicted_by: tuple[str, ...] = ()

    @property
    def explains(self) -> bool:
        """Within its bound everywhere, at least one element checked, and no passing quantity against it."""
        return self.fit.within and self.fit.checked > 0 and not self.contradicted_by

    def standing(self) -> str:
        """Its residual, and what speaks against it: "14", "0.12, but y contradicts it"."""
        against = f", but {', '.join(self.contradicted_by)} contradict{'s' if len(self.contradicted_by) == 1 else ''} it"
        return _fmt(self.fit.residual) + (against if self.contradicted_by else "")


@dataclass(frozen=True)
class Diagnosis:
    """The hypothesis that explains a set of failures (None: none does), its residual (max error/bound under it,
    or under the closest when none explains), and the runner-up with its residual."""

    name: str | None
    residual: float | None = None
    runner_up: str | None = None
    runner_up_residual: float | None = None
    closest: str | None = None  # the best-ranked hypothesis: `name` when one explains
    closest_standing: str = ""  # the closest's residual and what contradicts it
    runner_up_standing: str = ""

    @property
    def text(self) -> str:
        """What a report shows as the diagnosis: the mistake's name, or "unexplained"."""
        return self.name or "unexplained"

    @property
    def note(self) -> str:
        """The residual and the runner-up, e.g. "error/bound 0.31 under it; runner-up: eps outside the square
        root, 14"; for an unexplained failure, the closest hypothesis and how far it stays."""
        if self.closest is None:
            return "no candidate mistake applies"
        head = (f"error/bound {_fmt(self.residual)} under it" if self.name
                else f"closest: {self.closest}, error/bound {self.closest_standing}")
        if self.runner_up is None:
            return head
        return f"{head}; runner-up: {self.runner_up}, {self.runner_up_standing}"

    @property
    def verdict(self) -> Verdict:
        """The verdict the named hypothesis gives a quantity it explains (NON_CONFORMANT when none explains)."""
        return BY_NAME[self.name].verdict if self.name else Verdict.NON_CONFORMANT


UNDIAGNOSED = Diagnosis(None)


def _ranked(evidence: dict[str, _Evidence], quantities: Sequence[str]) -> list[Ranked]:
    """Hypotheses that cover every one of `quantities`, with their combined fit, best first: those that explain,
    the narrowest spread first; then the others, the smallest residual first. Ties keep the order of HYPOTHESES."""
    ranked = []
    for order, (name, ev) in enumerate(evidence.items()):
        if all(q in ev.fits for q in quantities):
            r = Ranked(name, sum((ev.fits[q] for q in quantities), Fit()), tuple(sorted(ev.contradicted_by)))
            residual = r.fit.residual if not np.isnan(r.fit.residual) else float("inf")
            ranked.append(((0, r.fit.spread, order) if r.explains else (1, residual, order), r))
    return [r for _, r in sorted(ranked, key=lambda t: t[0])]


def _diagnosis(ranked: list[Ranked]) -> Diagnosis:
    if not ranked:
        return UNDIAGNOSED
    best, runner = ranked[0], ranked[1] if len(ranked) > 1 else None
    return Diagnosis(best.name if best.explains else None, best.fit.residual,
                     runner and runner.name, runner and runner.fit.residual, best.name, best.standing(),
                     runner.standing() if runner else "")


def candidates(mode: Mode, convention: Convention, precision: Precision, quantities: Iterable[str]) -> list[Hypothesis]:
    """The hypotheses that apply to this declaration and change at least one of `quantities` in `mode`."""
    qs = set(quantities)
    return [h for h in HYPOTHESES if h.covers(mode) & qs and h.applies(mode, convention, precision)]


def diagnose(mode, cases: Sequence[Case], convention: Convention, precision: Precision,
             quantities: Iterable[str]) -> Diagnosis:
    """The mistake that explains every case's `quantities` (each case failed on them under the declared model):
    every applicable hypothesis evaluated on every case, the most specific one that explains named (module doc).
    A case is (inputs as prepared for the backend, its outputs as float64 arrays: all it returned, so that a
    hypothesis that puts a quantity passing under the declared model outside its bound is ruled out)."""
    mode, quantities, cases = Mode(mode), tuple(quantities), list(cases)
    hypotheses = [h for h in candidates(mode, convention, precision, quantities) if set(quantities) <= h.covers(mode)]
    passing = _passing(mode, cases, convention, precision)
    return _diagnosis(_ranked(_evidence(hypotheses, mode, cases, passing, convention, precision, quantities), quantities))


# ---------------------------------------------------------------- one call judged and explained


def judge(mode, observed: dict, inputs: Inputs, convention: Convention, precision: Precision) -> dict[str, Comparison]:
    """Compare every quantity in `observed` with the oracle under `convention` (`verdict.comparisons`), and explain
    the quantities outside their bound by the hypotheses: one that explains all of them names them all; else, per
    quantity, one that explains it alone ("explains this quantity only"); else they stay NON_CONFORMANT. The running
    statistics after an eval call are not explained here (they must be the given ones, bit for bit)."""
    mode = Mode(mode)
    results, failing = comparisons(mode, observed, inputs, convention, precision)
    if not failing:
        return results
    obs = {q: np.asarray(v, dtype=np.float64) for q, v in observed.items() if v is not None and q in results}
    passing = {q for q, c in results.items() if c.verdict is Verdict.CONFORMS and c.checked and q in obs
               and not (q in STATE and mode in EVAL)}
    hypotheses = candidates(mode, convention, precision, failing)
    evidence = _evidence(hypotheses, mode, [(inputs, obs)], [passing], convention, precision, failing)
    joint = _diagnosis(_ranked(evidence, failing))
    if joint.name:
        return {q: _explained(c, joint) if q in failing else c for q, c in results.items()}
    if len(failing) > 1:
        for q in failing:
            alone = _diagnosis(_ranked(evidence, (q,)))
            if alone.name:
                results[q] = _explained(results[q], alone, " (explains this quantity only)")
    return results


def _explained(c: Comparison, d: Diagnosis, suffix: str = "") -> Comparison:
    return replace(c, verdict=d.verdict, detail=f"{d.name}{suffix} ({d.note})")
