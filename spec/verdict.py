"""Comparing an implementation's outputs with the oracle: per-element error ratios and a classified verdict.

For each quantity, every element's error |observed - expected| is divided by its bound from the error
model. The verdict is, in this order of precedence:
  NONFINITE_MISMATCH     NaN/Inf where the oracle is finite, or the reverse (never masked);
  CONFORMS               every checkable element within its bound (ill-conditioned ones reported apart);
  ILL_CONDITIONED        every finite element lies where no first-order bound exists;
  CONVENTION_DIFFERENCE  outside the bound, but within it of a named variant of the convention;
  UNSTABLE_ALGORITHM     outside the stable bound, inside the E[x^2] - E[x]^2 one;
  PRECISION_DIFFERENCE   inside the bound of arithmetic in a narrower format than declared;
  NON_CONFORMANT         none of the above (with the name of a known mistake where one explains it).
`compare` classifies one quantity, `comparisons` every quantity of a call; `diagnosis.judge` then names the
mistake that explains the failures (spec/diagnosis.py: competing hypotheses, each within its own bound).
The running statistics after an eval call admit no error: any change from the given ones (NaN where NaN)
is NON_CONFORMANT, named "eval forward changed the running statistics" (SPEC.md section 1.6), and so is
running statistics returned by a call that was given none; no convention variant explains either.
"""

from dataclasses import dataclass, replace
from enum import Enum

import numpy as np

from .conventions import Convention
from .error_model import Precision
from .expect import STATE, Expected, Inputs, Mode, expected
from .formats import float_format
from . import ulp


class Verdict(Enum):
    CONFORMS = "conforms"
    CONVENTION_DIFFERENCE = "convention difference"
    UNSTABLE_ALGORITHM = "unstable algorithm"
    PRECISION_DIFFERENCE = "precision difference"  # rounds in a narrower format than declared (spec/diagnosis.py)
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
    # max |error| in ULPs (spec/ulp.py: spacings of the format at max(|expected|, smallest normal)) over the checked
    # elements whose bound is within ulp.ULP_LIMIT spacings; None where no element has a meaningful figure
    max_ulp: float | None
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
    outside: int = 0  # checked elements outside their bound
    nonfinite_agree: int = 0  # elements non-finite on both sides and the same (NaN, +Inf, -Inf): judged, and agree
    relative_error: float | None = None  # worst element: |observed - expected| / max(|expected|, smallest normal)
    ill_reason: str = ""  # ill-conditioned elements: how many, and why the worst of their channels has no bound

    @property
    def judged(self) -> bool:
        """The comparison decided something: an element was checked against its bound or by the non-finite
        semantics, or the quantity failed without one (a quantity not returned)."""
        return (self.checked > 0 or self.nonfinite_agree > 0 or self.nonfinite_mismatches > 0
                or self.verdict not in (Verdict.CONFORMS, Verdict.ILL_CONDITIONED))

    def seen(self) -> str:
        """One line on what was observed: at the worst element, observed against expected and its bound, and how
        many checked elements lie outside their bound; "" when no element was checked."""
        if self.worst_index is None:
            return ""
        return (f"at {self.worst_index}: observed {self.observed:.6g}, expected {self.expected:.6g} (bound "
                f"{self.bound:.2g}); {self.outside} of {self.checked} element(s) outside their bound")


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
    the right sign is exact, and a finite result is compared with the finite value; where the spec accepts any
    non-finite value (`Expected.nonfinite_ok`), a non-finite result is exact."""
    value = rounded_to_format(exp.value, fmt)
    threshold = _overflow_threshold(fmt)
    with np.errstate(invalid="ignore"):
        either = (np.abs(exp.value) + exp.bound >= threshold) & (np.abs(exp.value) - exp.bound < threshold)
        inf_ok = either & np.isinf(observed) & (np.sign(observed) == np.sign(exp.value))
        out = np.where(inf_ok, observed, np.where(either, exp.value, value))
    if exp.nonfinite_ok is not None:  # where the spec accepts any non-finite value (expect.nonfinite_accepted)
        out = np.where(exp.nonfinite_ok & ~np.isfinite(observed), observed, out)
    return out


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
    n_checked = int(checked.sum())
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape) if n_checked else None
    ill = finite & exp.ill

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
        max_ulp=ulp.max_ulps(observed[checked], value[checked], exp.bound[checked], fmt) if n_checked else None,
        worst_index=tuple(int(i) for i in worst) if worst is not None else None,
        observed=float(observed[worst]) if worst is not None else None,
        expected=float(exp.value[worst]) if worst is not None else None,
        bound=float(exp.bound[worst]) if worst is not None else None,
        checked=n_checked,
        ill_conditioned=int(ill.sum()),
        nonfinite_mismatches=int(mismatch.sum()),
        normwise_error=_normwise(observed, value, finite),
        outside=int((ratio > 1.0).sum()),
        nonfinite_agree=int((~finite & ~mismatch).sum()),
        relative_error=ulp.relative_error(observed[worst], exp.value[worst], fmt) if worst is not None else None,
        ill_reason=exp.ill_reason(ill),
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


def comparisons(
    mode: Mode, observed: dict, inputs: Inputs, convention: Convention, precision: Precision
) -> tuple[dict[str, Comparison], list[str]]:
    """Compare every quantity in `observed` with the oracle under `convention`: (the comparisons, the quantities
    outside their bound that a named mistake may explain, `diagnosis.judge`).

    Quantities the implementation did not return (absent or None) are skipped; a required one missing, running
    statistics returned by a call given none, and eval running statistics that are not the given ones bit for bit
    are NON_CONFORMANT with their reason, and no mistake explains them here.
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
    failing = [q for q, c in results.items() if c.verdict is Verdict.NON_CONFORMANT and q in obs and q not in state]
    return results, failing


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
