"""The oracle's backward passes are the derivatives of its forward passes.

For L = sum(dy * y), dL/dx, dL/dgamma and dL/dbeta are compared with central finite differences
(L(v + h) - L(v - h)) / 2h of an independent forward evaluated with mpmath at 80 digits
(bnconf.conformance.exact.hp_train_channel / hp_eval_channel), h = 1e-30, per channel. beta enters L as
sum(dy) * beta, constant in x and gamma, so the differences in x and gamma leave it out (beta = 0) and
their 80-digit cancellation error stays relative to the part of L that varies.

Tolerance = float64 bound + finite-difference bound, per value:
* float64: the derivative formula the oracle documents,
      dx = gamma s (dy - mean(dy)) + gamma s'(V) (2k/n) (x - mean) sum(dy (x - mean)),
      dgamma = s sum(dy (x - mean)),  dbeta = sum(dy)     (V = k var, k = 1 or n/(n-1)),
  replayed with `Bounded` numbers: exact values with a rigorous bound on the float64 error of each
  operation (mean and variance errors from bnconf.conformance.exact's derivations, every product and sum rounded).
  The replay's bound, not its value, is used: the reference value is the finite difference.
* finite differences: truncation h**2 |L'''| / 6, and 80-digit rounding of L divided by 2h. Each x-derivative
  of y scales by at most 1/sqrt(V + eps) <= 1e4 (eps >= 1e-8), or 1/sqrt(V) <= 1e10 where eps sits
  outside the root (V >= 1e-20 is assumed there), so the truncation is below 1e-60 * 1e20 * poly(n) of
  L's scale, and the rounding below 1e-78 / 1e-30 of it. 1e-30 of the scale (below) is an ample cap, still
  14 orders under the float64 bound: the comparison measures the oracle, not the differences.
Inputs have at most 24 elements so that the 80-digit differences stay cheap.
"""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given
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
from bnconf.spec.oracle import RunningStats, backward_eval, backward_train
from bnconf.conformance import exact
from bnconf.conformance.exact import FD, HP, Bounded, assert_within, hp

FD_CAP = HP.mpf(10) ** -30
OUTSIDE = "eps outside the square root"
UNBIASED = "normalized with the unbiased variance"


@dataclass
class Problem:
    x: np.ndarray
    dy: np.ndarray
    axis: int
    gamma: np.ndarray | None
    beta: np.ndarray | None
    eps: float


@st.composite
def problems(draw, allow_constant: bool = True):
    """Tiny inputs (<= 24 elements) of ranks 2-5 in any layout, an upstream gradient of any scale."""
    shape, axis = draw(shapes(max_batch=6, max_spatial=3, max_size=24).flatmap(layouts))
    x = draw(batches(shape, axis, allow_constant=allow_constant))
    seed, scale = draw(st.integers(0, 2**32 - 1)), 10.0 ** draw(st.floats(-2, 2))
    dy = np.random.default_rng(seed).standard_normal(shape) * scale
    gamma, beta = draw(affine_params(shape[axis])) if draw(st.booleans()) else (None, None)
    return Problem(x, dy, axis, gamma, beta, draw(eps_values()))


def flags(conv):
    return {
        "eps_outside": conv.eps_placement is EpsPlacement.OUTSIDE_SQRT,
        "unbiased": conv.normalize_with is Variance.UNBIASED,
    }


def channels(p: Problem):
    """Per channel: (flat positions, x values, dy values, gamma, beta)."""
    idxs = exact.channel_indices(p.x.shape, p.axis)
    g, b = exact.per_channel(p.gamma, len(idxs), 1.0), exact.per_channel(p.beta, len(idxs), 0.0)
    xs, dys = exact.channel_values(p.x, p.axis), exact.channel_values(p.dy, p.axis)
    return list(zip(idxs, xs, dys, g, b))


def train_backward_bounds(values, dys, g, *, eps, eps_outside, unbiased):
    """The backward formula (module docstring) in Bounded arithmetic: (dx list, dgamma, dbeta, s)."""
    st_ = exact.channel_stats(values)
    n = st_.n
    mean = Bounded(hp(st_.mean), hp(exact.mean_error_bound(st_)))
    var = Bounded(hp(st_.var), hp(exact.variance_error_bound(st_)))
    k = Bounded(n) / (n - 1) if unbiased else Bounded(1)
    v = k * var
    s = exact.inverse_std_bounded(v, eps, eps_outside)
    ds = -0.5 * (s.power(2) / v.sqrt()) if eps_outside else -0.5 * s.power(3)
    centered = [Bounded(x) - mean for x in values]
    sum_dy = Bounded.sum(dys)
    sum_dy_centered = Bounded.sum([dy * c for dy, c in zip(dys, centered)])
    coef = ds * (2 * k / n) * sum_dy_centered
    dx = [(s * (dy - sum_dy / n) + coef * c) * g for dy, c in zip(dys, centered)]
    return dx, s * sum_dy_centered, sum_dy, s


@dataclass
class Expected:
    """One channel's reference gradients (finite differences) and how far the oracle may be from each."""

    dx: list
    dx_bound: list
    dgamma: object
    dgamma_bound: object
    dbeta: object
    dbeta_bound: object


def expected(loss, xs, dys, g, b, replay, s, spread) -> Expected:
    """Finite differences of loss(values, gamma, beta) and, per value, the replay's float64 bound plus the
    finite-difference cap. `spread` is x's scale in the channel (largest |x - centre| plus |centre|)."""
    fd_dx, fd_dgamma, fd_dbeta = exact.channel_gradients(loss, xs, g, b)
    dx, dgamma, dbeta = replay
    z = sum(abs(hp(d)) for d in dys) * (1 + spread * s)  # the scale of sum(dy * y) without beta
    return Expected(
        [hp(v) for v in fd_dx],
        [d.err + FD_CAP * abs(g) * s * z for d in dx],
        hp(fd_dgamma),
        dgamma.err + FD_CAP * z,
        hp(fd_dbeta),
        dbeta.err + FD_CAP * (z * (1 + abs(g)) + abs(b)),
    )


def check_gradients(got, p: Problem, per_channel: list[Expected]):
    dx, dx_bound = np.empty(p.x.size, dtype=object), np.empty(p.x.size, dtype=object)
    for (idx, *_), e in zip(channels(p), per_channel):
        dx[idx], dx_bound[idx] = e.dx, e.dx_bound
    assert_within(got.dx, dx.reshape(p.x.shape), dx_bound.reshape(p.x.shape), "dx")
    assert_within(got.dgamma, [e.dgamma for e in per_channel], [e.dgamma_bound for e in per_channel], "dgamma")
    assert_within(got.dbeta, [e.dbeta for e in per_channel], [e.dbeta_bound for e in per_channel], "dbeta")


@pytest.mark.parametrize("variant", ["as recorded", OUTSIDE, UNBIASED])
@given(base=st.sampled_from(list(CONVENTIONS.values())), data=st.data())
def test_training_backward_is_the_derivative_of_the_training_forward(variant, base, data):
    """backward_train(dy) = d/d(x, gamma, beta) of sum(dy * y), y normalized by the batch's statistics;
    also for the variants with eps outside the root (non-constant channels: sqrt(var) has no derivative
    at var = 0) and with the unbiased variance (n >= 2)."""
    conv = base if variant == "as recorded" else variants(base)[variant]
    f = flags(conv)
    p = data.draw(problems(allow_constant=variant != OUTSIDE), label="problem")
    stats = exact.batch_stats(p.x, p.axis)
    if variant != "as recorded":
        assume(all(s.n > 1 for s in stats))
    if variant == OUTSIDE:
        assume(all(s.var >= 1e-20 for s in stats))
    eps = max(p.eps, conv.eps_min)
    got = backward_train(p.dy, p.x, p.gamma, convention=conv, axis=p.axis, eps=p.eps)

    per_channel = []
    for (_, xs, dys, g, b), st_ in zip(channels(p), stats):
        def loss(values, gg, bb):
            ys = exact.hp_train_channel(values, gg, bb, eps=eps, **f)
            return FD.fsum(hp(d, FD) * y for d, y in zip(dys, ys))

        *replay, s = train_backward_bounds(xs, dys, g, eps=eps, **f)
        spread = hp(st_.abs_mean) + max(abs(hp(x) - hp(st_.mean)) for x in xs)
        per_channel.append(expected(loss, xs, dys, g, b, replay, s.value, spread))
    check_gradients(got, p, per_channel)


@pytest.mark.parametrize("variant", ["as recorded", OUTSIDE])
@given(base=st.sampled_from(list(CONVENTIONS.values())), data=st.data())
def test_eval_backward_is_the_derivative_of_the_eval_forward(variant, base, data):
    """backward_eval(dy) = d/d(x, gamma, beta) of sum(dy * y), y normalized by running statistics that
    do not depend on x: dx = dy gamma s(running_var)."""
    conv = base if variant == "as recorded" else variants(base)[variant]
    f = flags(conv)
    p = data.draw(problems(), label="problem")
    chans = channels(p)
    rm, rv = data.draw(running_stats_values(len(chans)), label="running (mean, var)")
    eps = max(p.eps, conv.eps_min)
    got = backward_eval(p.dy, p.x, p.gamma, RunningStats(rm, rv), convention=conv, axis=p.axis, eps=p.eps)

    per_channel = []
    for c, (_, xs, dys, g, b) in enumerate(chans):
        def loss(values, gg, bb):
            ys = exact.hp_eval_channel(values, gg, bb, rm[c], rv[c], eps=eps, eps_outside=f["eps_outside"])
            return FD.fsum(hp(d, FD) * y for d, y in zip(dys, ys))

        # the formula: dx = (dy * s) * gamma, dgamma = sum(dy * xhat), xhat = ((1 * (x - rm)) * s) + 0
        s = exact.inverse_std_bounded(Bounded(rv[c]), eps, f["eps_outside"])
        dx = [(dy * s) * g for dy in dys]
        dgamma = Bounded.sum([dy * ((1.0 * (Bounded(x) - rm[c])) * s + 0.0) for dy, x in zip(dys, xs)])
        spread = max(abs(hp(x)) for x in xs) + abs(hp(rm[c]))
        per_channel.append(expected(loss, xs, dys, g, b, (dx, dgamma, Bounded.sum(dys)), s.value, spread))
    check_gradients(got, p, per_channel)
