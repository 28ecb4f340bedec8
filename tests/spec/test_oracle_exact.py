"""The oracle's statistics and outputs equal an exact computation, within derived float64 rounding bounds.

The reference (bnconf.conformance.exact) never calls bnconf: means and variances are exact rationals, the square
root and what follows it are evaluated at 60 digits. Each tolerance is a rigorous bound on the rounding
error of the oracle's float64 algorithm (standard model, u = 2**-53), derived where it is computed:

* mean: gamma(n-1) mean|x| + u |mean|, i.e. n u relative to sum|x| / n: the worst case of any summation
  order (NumPy's pairwise sum included) plus the division's rounding.
* variances: (n + 2) u relative to var, plus second-order terms in the mean's error D ~ n u mean|x|. The
  corrected two-pass algorithm cancels the first-order effect of the mean's error, so the bound stays
  relative to var even for |mean| >> std. A plain two-pass variance (off by up to D**2) or a one-pass
  E[x^2] - E[x]^2 (off by about u mean**2) breaks it on the far-offset example below.
* y: the mean's and the variance's errors propagated through y = ((gamma (x - mean)) s) + beta, plus one
  rounding per operation. The mean's error reaches y as |gamma| s n u mean|x|: a few ulps of |gamma| for
  a centred channel, n u |mean| / std of |gamma| for an offset one (float64's mean, not the oracle's fault).
"""

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from bnconf.conformance.strategies import (
    affine_params,
    batches,
    eps_values,
    layouts,
    running_stats_values,
    shapes,
)
from bnconf.spec.conventions import CONVENTIONS, EpsPlacement, Variance, variants
from bnconf.spec.oracle import RunningStats, batch_stats, forward_eval, forward_train
from bnconf.conformance import exact
from bnconf.conformance.exact import assert_within, hp


@dataclass
class Problem:
    x: np.ndarray
    axis: int
    gamma: np.ndarray | None
    beta: np.ndarray | None
    eps: float

    @property
    def channels(self) -> int:
        return self.x.shape[self.axis]


@st.composite
def problems(draw, max_size: int = 64):
    """Ranks 2-5, channel axis first, last or elsewhere, constant and far-offset channels, affine or not."""
    shape, axis = draw(shapes(max_size=max_size).flatmap(layouts))
    x = draw(batches(shape, axis))
    gamma, beta = draw(affine_params(shape[axis])) if draw(st.booleans()) else (None, None)
    return Problem(x, axis, gamma, beta, draw(eps_values()))


# A constant channel whose float64 mean is not exact (0.1 + 0.1 + 0.1 rounds up), next to a channel with
# |mean| / std = 1e8, far beyond the strategies' 1e4.
CONSTANT_AND_FAR_OFFSET = Problem(
    np.array([[0.1, 1e5], [0.1, 1e5 + 1e-3], [0.1, 1e5 - 2e-3]]), 1, None, None, 1e-8
)

conventions = st.sampled_from(list(CONVENTIONS.values()))
NORMALIZATION_VARIANTS = ["as recorded", "eps outside the square root", "normalized with the unbiased variance"]


def with_variant(conv, name):
    return conv if name == "as recorded" else variants(conv)[name]


def flags(conv):
    """The convention's choices, as the plain reference's keyword arguments."""
    return {
        "eps_outside": conv.eps_placement is EpsPlacement.OUTSIDE_SQRT,
        "unbiased": conv.normalize_with is Variance.UNBIASED,
    }


@given(problem=problems())
@example(problem=CONSTANT_AND_FAR_OFFSET)
def test_batch_mean_and_variances_are_the_exact_ones_up_to_summation_rounding(problem):
    """mean, biased var and Bessel-corrected var per channel equal the exact rationals within their bounds;
    with one value per channel the unbiased variance is NaN."""
    oracle = batch_stats(problem.x, problem.axis)
    for c, ex in enumerate(exact.batch_stats(problem.x, problem.axis)):
        assert oracle.count == ex.n
        assert abs(Fraction(oracle.mean[c]) - ex.mean) <= exact.mean_error_bound(ex), f"mean of channel {c}"
        assert abs(Fraction(oracle.var[c]) - ex.var) <= exact.variance_error_bound(ex), f"var of channel {c}"
        if ex.n == 1:
            assert np.isnan(oracle.var_unbiased[c])
        else:
            err = abs(Fraction(oracle.var_unbiased[c]) - ex.var_unbiased)
            assert err <= exact.variance_error_bound(ex, unbiased=True), f"unbiased var of channel {c}"


@pytest.mark.parametrize("variant", NORMALIZATION_VARIANTS)
@given(problem=problems(), base=conventions)
@example(problem=CONSTANT_AND_FAR_OFFSET, base=CONVENTIONS["torch.nn.BatchNorm2d"])
def test_training_output_is_the_exact_normalization_by_batch_statistics(variant, problem, base):
    """y = gamma (x - mean) s + beta with the batch's mean and variance, s = 1/sqrt(V + eps) (or the
    variant's 1/(sqrt(V) + eps), or V unbiased); the saved mean, variance and s are the exact ones too."""
    conv = with_variant(base, variant)
    f = flags(conv)
    assume(not f["unbiased"] or problem.x.size // problem.channels > 1)
    eps = max(problem.eps, conv.eps_min)
    p = problem
    out = forward_train(p.x, p.gamma, p.beta, convention=conv, axis=p.axis, eps=p.eps)

    y = exact.train_forward(p.x, p.gamma, p.beta, axis=p.axis, eps=eps, **f)
    assert_within(out.y, y, exact.train_output_bounds(p.x, p.gamma, p.beta, axis=p.axis, eps=eps, **f), "y")

    stats = exact.batch_stats(p.x, p.axis)
    unbiased = f["unbiased"]
    var = [exact.Bounded(hp(s.variance(unbiased)), hp(exact.variance_error_bound(s, unbiased))) for s in stats]
    invstd = [exact.inverse_std_bounded(v, eps, f["eps_outside"]) for v in var]
    mean_bounds = [hp(exact.mean_error_bound(s)) for s in stats]
    assert_within(out.saved_mean, [hp(s.mean) for s in stats], mean_bounds, "saved mean")
    assert_within(out.saved_var, [v.value for v in var], [v.err for v in var], "saved variance")
    assert_within(out.saved_invstd, [s.value for s in invstd], [s.err for s in invstd], "saved invstd")


@pytest.mark.parametrize("variant", ["as recorded", "eps outside the square root"])
@given(problem=problems(), base=conventions, data=st.data())
def test_eval_output_is_the_exact_normalization_by_running_statistics(variant, problem, base, data):
    """y = gamma (x - running_mean) s(running_var) + beta exactly, up to one rounding per operation."""
    conv = with_variant(base, variant)
    f = flags(conv)
    p = problem
    mean, var = data.draw(running_stats_values(p.channels), label="running (mean, var)")
    eps = max(p.eps, conv.eps_min)
    y = forward_eval(p.x, p.gamma, p.beta, RunningStats(mean, var), convention=conv, axis=p.axis, eps=p.eps)

    args = (p.x, p.gamma, p.beta, mean, var)
    kwargs = dict(axis=p.axis, eps=eps, eps_outside=f["eps_outside"])
    assert_within(y, exact.eval_forward(*args, **kwargs), exact.eval_output_bounds(*args, **kwargs), "eval y")
