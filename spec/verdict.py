"""Comparing an implementation's outputs with the oracle: per-element error ratios and a classified verdict.

For each quantity, every element's error |observed - expected| is divided by its bound from the error
model. The verdict is, in this order of precedence:
  NONFINITE_MISMATCH     NaN/Inf where the oracle is finite, or the reverse (never masked);
  CONFORMS               every checkable element within its bound (ill-conditioned ones reported apart);
  ILL_CONDITIONED        every finite element lies where no first-order bound exists;
  CONVENTION_DIFFERENCE  outside the bound, but within it of a named variant of the convention;
  UNSTABLE_ALGORITHM     outside the stable bound, inside the E[x^2] - E[x]^2 one;
  NON_CONFORMANT         none of the above.
The running statistics after an eval call admit no error: any change from the given ones (NaN where NaN)
is NON_CONFORMANT, named "eval forward changed the running statistics" (SPEC.md section 1.6), and so is
running statistics returned by a call that was given none; no convention variant explains either.
"""

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from .conventions import Convention, variants
from .error_model import Precision
from .expect import STATE, Expected, Inputs, Mode, expected
from .formats import float_format


class Verdict(Enum):
    CONFORMS = "conforms"
    CONVENTION_DIFFERENCE = "convention difference"
    UNSTABLE_ALGORITHM = "unstable algorithm"
    NONFINITE_MISMATCH = "non-finite mismatch"
    ILL_CONDITIONED = "ill-conditioned"
    NON_CONFORMANT = "non-conformant"


@dataclass(frozen=True)
class Comparison:
    """How one quantity compares with the oracle."""

    quantity: str
    verdict: Verdict
    detail: str  # the named convention difference, or what the non-finite mismatch is
    max_ratio: float  # max over checked elements of |error| / bound
    p99_ratio: float
    max_ulp: float  # max |error| in ULPs of the quantity's format at the expected value
    worst_index: tuple[int, ...] | None
    observed: float | None  # at the worst element
    expected: float | None
    bound: float | None
    checked: int  # elements with a bound, finite on both sides
    ill_conditioned: int  # finite elements without a bound
    nonfinite_mismatches: int
    # max |error| / max(|expected|, |observed|) over the finite elements, ill-conditioned ones included: the error
    # in units of the quantity's scale, for plotting accuracy against conditioning
    normwise_error: float = 0.0


def _nonfinite_mismatch(observed: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Elements where finiteness differs, or both are non-finite but not the same (NaN, +Inf, -Inf)."""
    obs_f, exp_f = np.isfinite(observed), np.isfinite(value)
    same_nonfinite = (np.isnan(observed) & np.isnan(value)) | (np.isinf(observed) & (observed == value))
    return (obs_f != exp_f) | (~obs_f & ~exp_f & ~same_nonfinite)


def _ratios(observed, value, bound) -> np.ndarray:
    err = np.abs(observed - value)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(err == 0, 0.0, err / bound)


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def rounded_to_format(value: np.ndarray, fmt: str) -> np.ndarray:
    """The oracle's value as the format can hold it: beyond max + ulp(max)/2 round-to-nearest gives +-Inf.

    This is the correctly rounded result, not a mask: a finite value where the format must overflow,
    or Inf where it need not, is still a non-finite mismatch.
    """
    with np.errstate(invalid="ignore"):
        return np.where(np.abs(value) >= _overflow_threshold(fmt), np.sign(value) * np.inf, value)


def _overflow_threshold(fmt: str) -> float:
    f = float_format(fmt)
    return f.max_value + float(f.ulp(f.max_value)) / 2


def expected_in_format(observed: np.ndarray, exp: Expected, fmt: str) -> np.ndarray:
    """What `observed` is compared with: the value rounded to the format, except where the value is within
    its bound of the overflow threshold, so that a correct result may round either way: there +-Inf of
    the right sign is exact, and a finite result is compared with the finite value."""
    value = rounded_to_format(exp.value, fmt)
    threshold = _overflow_threshold(fmt)
    with np.errstate(invalid="ignore"):
        either = (np.abs(exp.value) + exp.bound >= threshold) & (np.abs(exp.value) - exp.bound < threshold)
        inf_ok = either & np.isinf(observed) & (np.sign(observed) == np.sign(exp.value))
        return np.where(inf_ok, observed, np.where(either, exp.value, value))


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def _worst_ratio(observed, value, exp: Expected, one_pass: bool = False) -> float:
    """Max error/bound over elements finite on both sides where the model gives a bound; infinite when
    finiteness differs anywhere.

    Where the model gives no bound at all: a convention variant that checks nothing explains nothing
    (infinite); the one-pass model is unbounded there by its nature, so any value is consistent with it (0).
    `judge` only asks about quantities the stable model did check and found outside their bound."""
    if _nonfinite_mismatch(observed, value).any():
        return float("inf")
    bound, ill = (exp.bound_one_pass, exp.ill_one_pass) if one_pass else (exp.bound, exp.ill)
    both = np.isfinite(observed) & np.isfinite(value) & ~ill
    if not both.any():
        return 0.0 if one_pass else float("inf")
    return float(np.max(_ratios(observed[both], value[both], bound[both])))


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def compare(quantity: str, observed, exp: Expected, fmt: str) -> Comparison:
    """Compare `observed` with the oracle's value element by element; `fmt` is the quantity's format.

    The verdict here is CONFORMS, NONFINITE_MISMATCH, ILL_CONDITIONED or NON_CONFORMANT; `judge`
    then looks for what explains a non-conformant quantity.
    """
    observed = np.asarray(observed, dtype=np.float64)
    if observed.shape != exp.value.shape:
        raise ValueError(f"{quantity}: expected shape {exp.value.shape}, the implementation returned {observed.shape}")
    value = expected_in_format(observed, exp, fmt)
    mismatch = _nonfinite_mismatch(observed, value)
    finite = np.isfinite(observed) & np.isfinite(value)
    checked = finite & ~exp.ill
    ratio = np.where(checked, _ratios(observed, value, exp.bound), 0.0)
    ulp = np.where(checked, np.abs(observed - value) / float_format(fmt).ulp(value), 0.0)
    n_checked = int(checked.sum())
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if n_checked else None

    detail = ""
    if mismatch.any():
        verdict = Verdict.NONFINITE_MISMATCH
        at = np.unravel_index(int(np.argmax(mismatch)), mismatch.shape)
        detail = f"{int(mismatch.sum())} element(s), first at {tuple(map(int, at))}: observed {observed[at]}, oracle {value[at]}"
    elif n_checked == 0 and finite.any():
        verdict = Verdict.ILL_CONDITIONED
    elif not (ratio > 1.0).any():
        verdict = Verdict.CONFORMS
    else:
        verdict = Verdict.NON_CONFORMANT
    return Comparison(
        quantity=quantity,
        verdict=verdict,
        detail=detail,
        max_ratio=float(ratio.max()) if n_checked else 0.0,
        p99_ratio=float(np.percentile(ratio[checked], 99)) if n_checked else 0.0,
        max_ulp=float(ulp.max()) if n_checked else 0.0,
        worst_index=tuple(int(i) for i in worst) if worst is not None else None,
        observed=float(observed[worst]) if worst is not None else None,
        expected=float(exp.value[worst]) if worst is not None else None,
        bound=float(exp.bound[worst]) if worst is not None else None,
        checked=n_checked,
        ill_conditioned=int((finite & exp.ill).sum()),
        nonfinite_mismatches=int(mismatch.sum()),
        normwise_error=_normwise(observed, value, finite),
    )


def _normwise(observed, value, finite) -> float:
    if not finite.any():
        return 0.0
    scale = float(max(np.max(np.abs(value[finite])), np.max(np.abs(observed[finite]))))
    return float(np.max(np.abs(observed[finite] - value[finite]))) / scale if scale > 0 else 0.0


_STATS_QUANTITIES = {"saved_mean", "saved_var", "saved_invstd", "running_mean", "running_var", "dgamma", "dbeta"}


def quantity_format(quantity: str, precision: Precision) -> str:
    """Statistics and parameter gradients come back in the stats format, the rest in the input's."""
    return precision.stats if quantity in _STATS_QUANTITIES else precision.dtype


def judge(
    mode: Mode, observed: dict, inputs: Inputs, convention: Convention, precision: Precision
) -> dict[str, Comparison]:
    """Compare every quantity in `observed` with the oracle under `convention`, and explain failures.

    Quantities the implementation did not return (absent or None) are skipped. Quantities outside their
    bound are explained, in this order, by: one named variant of the convention that accounts for every
    returned quantity; the one-pass variance model, if it accounts for every failing quantity; else, per
    quantity, the best-fitting variant, the one-pass model, or nothing (non-conformant).
    """
    mode = Mode(mode)
    exp = expected(mode, inputs, convention, precision)
    returned = set(k for k, v in observed.items() if v is not None)
    stateless = returned & set(STATE) & set(mode.quantities) if inputs.running is None else set()
    unknown = returned - set(exp) - stateless
    if unknown:
        raise ValueError(f"{mode.value} has no quantity {sorted(unknown)}; it returns {list(exp)}")
    obs = {q: np.asarray(observed[q], dtype=np.float64) for q in exp if observed.get(q) is not None}
    results = {q: compare(q, obs[q], exp[q], quantity_format(q, precision)) for q in obs}
    for q in sorted(required_quantities(mode, inputs) - set(obs)):
        results[q] = Comparison(q, Verdict.NON_CONFORMANT, "not returned: every implementation of this mode must return it",
                                0.0, 0.0, 0.0, None, None, None, None, 0, 0, 0)
    for q in sorted(stateless):
        results[q] = Comparison(q, Verdict.NON_CONFORMANT, f"{_words(mode)} returned {q} although the call was given "
                                "no running statistics: a call without them has none to return (return None)",
                                0.0, 0.0, 0.0, None, None, None, None, 0, 0, 0)
    state = {q for q in obs if q in STATE and mode in _EVAL}  # must come back unchanged, bit for bit
    for q in state:
        if results[q].verdict is not Verdict.CONFORMS:
            results[q] = _changed(mode, q, obs[q], exp[q].value, results[q])
    judged = [q for q in obs if q not in state]  # what a convention variant or the one-pass model may explain
    failing = [q for q, c in results.items() if c.verdict is Verdict.NON_CONFORMANT and q in judged]
    if not failing:
        return results

    def fit(q: str, e: Expected, one_pass: bool = False) -> float:
        fmt = quantity_format(q, precision)
        return _worst_ratio(obs[q], expected_in_format(obs[q], e, fmt), e, one_pass)

    alternatives = {name: expected(mode, inputs, v, precision) for name, v in variants(convention).items()}
    whole = sorted(
        (max(fit(q, alt[q]) for q in judged), name)
        for name, alt in alternatives.items()
        if all(fit(q, alt[q]) <= 1.0 for q in judged)
    )
    if whole:
        return _explained(results, failing, Verdict.CONVENTION_DIFFERENCE, _named(whole))
    if all(fit(q, exp[q], one_pass=True) <= 1.0 for q in failing):
        return _explained(results, failing, Verdict.UNSTABLE_ALGORITHM, _ONE_PASS)
    for q in failing:
        partial = sorted((r, name) for name, alt in alternatives.items() if (r := fit(q, alt[q])) <= 1.0)
        if partial:
            results[q] = replace(results[q], verdict=Verdict.CONVENTION_DIFFERENCE,
                                 detail=_named(partial) + " (explains this quantity only)")
        elif fit(q, exp[q], one_pass=True) <= 1.0:
            results[q] = replace(results[q], verdict=Verdict.UNSTABLE_ALGORITHM, detail=_ONE_PASS)
    return results


_ONE_PASS = "consistent with a one-pass E[x^2] - E[x]^2 variance"
_EVAL = (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD)


def _words(mode: Mode) -> str:
    return mode.value.replace("_", " ")


@np.errstate(invalid="ignore")
def _changed(mode: Mode, q: str, observed: np.ndarray, given: np.ndarray, c: Comparison) -> Comparison:
    """An eval call's running statistic that is not the one it was given: NON-CONFORMANT, saying where."""
    changed = ~((observed == given) | (np.isnan(observed) & np.isnan(given)))
    at = int(np.argmax(changed))
    detail = (f"{_words(mode)} changed the running statistics: {q} differs in {int(changed.sum())} of {changed.size} "
              f"channel(s), first channel {at}: given {float(given[at])!r}, after the call {float(observed[at])!r} "
              "(eval must leave them unchanged)")
    return replace(c, verdict=Verdict.NON_CONFORMANT, detail=detail, worst_index=(at,),
                   observed=float(observed[at]), expected=float(given[at]), bound=0.0)


def required_quantities(mode: Mode, inputs: Inputs) -> set[str]:
    """What every implementation of `mode` returns: y; the updated running statistics when it was given
    some to update; dx, and dgamma and dbeta when it has affine parameters. Saved statistics are optional,
    and so are the running statistics after an eval call (an API may not show them); when returned they
    must be the ones given, bit for bit (`judge`), and a call given none must return none."""
    if mode is Mode.TRAIN_FORWARD:
        return {"y"} | ({"running_mean", "running_var"} if inputs.running is not None else set())
    if mode is Mode.EVAL_FORWARD:
        return {"y"}
    return {"dx"} | ({"dgamma", "dbeta"} if inputs.gamma is not None else set())


def _named(fits: list[tuple[float, str]]) -> str:
    """The best-fitting name, and any others that fit too."""
    detail = fits[0][1]
    if len(fits) > 1:
        detail += f" (also consistent: {', '.join(name for _, name in fits[1:])})"
    return detail


def _explained(results: dict, failing: list[str], verdict: Verdict, detail: str) -> dict[str, Comparison]:
    return {q: replace(c, verdict=verdict, detail=detail) if q in failing else c for q, c in results.items()}
