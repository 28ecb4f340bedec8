"""Properties batch normalization has by definition, checked on the oracle with derived float64 tolerances.

* Training output, gamma = 1 and beta = 0: per channel its mean is 0 and its biased variance var/(var+eps).
  With per-element bounds E_i on |y_i - exact y_i| (bnconf.conformance.exact.train_output_bounds) and the exact
  output's mean 0 and variance var/(var+eps): |mean(y)| <= mean(E) and, by Cauchy-Schwarz,
  |var(y) - var/(var+eps)| <= 2 sqrt(var/(var+eps)) sqrt(mean(E**2)) + mean(E**2).
* Running statistics after k identical batches follow closed forms. Each update
  r <- fl(fl(fl(1 - w) r) + fl(w b)) rounds (1 - w) (and w itself, w = fl(1 - momentum)), two products and a
  sum: at most 5 u max(|r|, |b|) per step to first order, so after k steps 5 k u M with M = max(|r_0|, |b|)
  (every exact iterate is a convex combination of r_0 and b); 6 k u M covers the second-order terms for
  k <= 8 (k u < 1e-15). For the cumulative average (w = 1/t) and the zero-debiased average the first
  weight is exactly 1 (r_1 = b) and b is a fixed point of any update with a weight in [0, 1], so the
  weight's own rounding does not matter and the same bound holds. The batch statistic b is the exact one;
  its float64 error (bnconf.conformance.exact's bounds) adds at most once, since the weights on b sum to at most 1.
* Eval normalizes with the running statistics: no element's output depends on the rest of the batch.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bnconf.conformance.strategies import batches, eps_values, layouts, momenta, running_stats_values, shapes
from bnconf.spec.conventions import CONVENTIONS, TORCH_BATCHNORM1D, EpsPlacement, MomentumStyle, Variance
from bnconf.spec.oracle import RunningStats, forward_eval, forward_train
from bnconf.conformance import exact
from bnconf.conformance.exact import HP, U, assert_within, gamma, hp

conventions = st.sampled_from(list(CONVENTIONS.values()))


@given(conv=conventions, data=st.data())
def test_normalized_training_output_has_mean_zero_and_variance_var_over_var_plus_eps(conv, data):
    """With gamma = 1, beta = 0, each channel of y has mean 0 and biased variance var / (var + eps)."""
    assert conv.normalize_with is Variance.BIASED and conv.eps_placement is EpsPlacement.INSIDE_SQRT
    shape, axis = data.draw(shapes(max_size=64).flatmap(layouts), label="(shape, axis)")
    x = data.draw(batches(shape, axis), label="x")
    eps = max(data.draw(eps_values(), label="eps"), conv.eps_min)
    y = forward_train(x, convention=conv, axis=axis, eps=eps).y
    bounds = exact.train_output_bounds(x, axis=axis, eps=eps).ravel()

    for c, (idx, ys, st_) in enumerate(
        zip(exact.channel_indices(x.shape, axis), exact.channel_values(y, axis), exact.batch_stats(x, axis))
    ):
        out = exact.channel_stats(ys)
        e = [bounds[i] for i in idx]
        mean_e, mean_e2 = HP.fsum(e) / len(e), HP.fsum(b * b for b in e) / len(e)
        target = hp(st_.var) / (hp(st_.var) + hp(eps))
        assert abs(hp(out.mean)) <= mean_e, f"channel {c}: output mean {float(out.mean)!r}"
        tol = 2 * HP.sqrt(target) * HP.sqrt(mean_e2) + mean_e2
        assert abs(hp(out.var) - target) <= tol, f"channel {c}: output variance {float(out.var)!r}, not {target}"


def closed_form(conv, momentum, k, r0: Fraction, b: Fraction) -> Fraction:
    """r_k after k >= 1 identical batches with statistic b, starting from r_0."""
    if momentum is None or conv.zero_debias:
        # cumulative average: every batch weighs 1/t; zero-debiased: hidden_k = (1 - d**k) b, so r_k = b
        return b
    w = Fraction(momentum) if conv.momentum_style is MomentumStyle.NEW_WEIGHT else 1 - Fraction(momentum)
    return (1 - w) ** k * r0 + (1 - (1 - w) ** k) * b


RUNNING_CASES = [pytest.param(c, "numeric", id=c.name) for c in CONVENTIONS.values() if c.tracks_running_stats] + [
    pytest.param(c, None, id=f"{c.name}, momentum None") for c in CONVENTIONS.values() if c.cumulative_average
]


@pytest.mark.parametrize("conv, momentum_kind", RUNNING_CASES)
@given(data=st.data())
def test_running_statistics_after_k_identical_batches_follow_the_closed_form(conv, momentum_kind, data):
    """Exponential: r_k = (1-w)**k r_0 + (1 - (1-w)**k) b, w = momentum (new-weight) or 1 - momentum
    (old-weight); cumulative (momentum None) and zero-debiased: r_k = b. The variance averaged is the
    biased or the Bessel-corrected batch variance, as the convention says."""
    shape, axis = data.draw(shapes(max_size=32).flatmap(layouts), label="(shape, axis)")
    x = data.draw(batches(shape, axis), label="x")
    stats = exact.batch_stats(x, axis)
    unbiased = conv.running_var is Variance.UNBIASED
    assume(not unbiased or stats[0].n > 1)
    momentum = None if momentum_kind is None else data.draw(momenta(), label="momentum")
    k = data.draw(st.integers(1, 8), label="k")
    r0_mean, r0_var = data.draw(running_stats_values(len(stats)), label="initial running (mean, var)")

    running = RunningStats(r0_mean, r0_var, 0)
    for _ in range(k):
        out = forward_train(x, running=running, convention=conv, axis=axis, eps=1e-5, momentum=momentum)
        running = out.running
    assert running.count == k

    for c, st_ in enumerate(stats):
        for name, got, r0, b, db in [
            ("mean", running.mean[c], r0_mean[c], st_.mean, exact.mean_error_bound(st_)),
            ("var", running.var[c], r0_var[c], st_.variance(unbiased), exact.variance_error_bound(st_, unbiased)),
        ]:
            r0 = Fraction(float(r0))
            m = max(abs(r0), abs(b) + db)
            expected = closed_form(conv, momentum, k, r0, b)
            assert abs(Fraction(float(got)) - expected) <= db + 6 * k * U * m, (
                f"running {name} of channel {c} after {k} batches: {float(got)!r}, closed form {float(expected)!r}"
            )


@given(conv=conventions, data=st.data())
def test_eval_output_of_each_element_depends_only_on_it_and_the_running_statistics(conv, data):
    """Normalizing slices of the batch separately gives bit-identical outputs: eval never looks at the batch."""
    shape, axis = data.draw(shapes(max_size=64).flatmap(layouts), label="(shape, axis)")
    x = data.draw(batches(shape, axis), label="x")
    axis = axis % x.ndim
    rm, rv = data.draw(running_stats_values(shape[axis]), label="running (mean, var)")
    running = RunningStats(rm, rv)
    whole = forward_eval(x, running=running, convention=conv, axis=axis, eps=1e-3)
    split = next(a for a in range(x.ndim) if a != axis)
    parts = [
        forward_eval(part, running=running, convention=conv, axis=axis, eps=1e-3)
        for part in np.split(x, x.shape[split], axis=split)
    ]
    np.testing.assert_array_equal(whole, np.concatenate(parts, axis=split))
    # and replacing the rest of the batch changes nothing for the first slice
    rest = 1e3 * np.ones_like(np.delete(x, 0, axis=split))
    other = np.concatenate([np.take(x, [0], axis=split), rest], axis=split)
    np.testing.assert_array_equal(
        np.take(forward_eval(other, running=running, convention=conv, axis=axis, eps=1e-3), [0], axis=split),
        parts[0],
    )


X_DOC = np.array([[0.0], [2.0]])  # PyTorch's BatchNorm1d docstring example: mean 1, biased var 1, unbiased var 2


def test_pytorch_running_variance_is_unbiased_while_the_output_uses_the_biased_variance():
    """BatchNorm1d(1, momentum=1.0) trained on [[0], [2]]: running_var = 2.0, running_mean = 1.0, and y uses
    variance 1.0: y = -+1/sqrt(1 + eps), within the 3 roundings of 1/sqrt(1 + eps) (mean, var, x - mean are
    exact here)."""
    out = forward_train(
        X_DOC, running=RunningStats.initial(1), convention=TORCH_BATCHNORM1D, axis=1, eps=1e-5, momentum=1.0
    )
    assert out.running.mean.tolist() == [1.0]
    assert out.running.var.tolist() == [2.0]
    assert out.saved_var.tolist() == [1.0]
    s = 1 / HP.sqrt(1 + hp(1e-5))
    assert_within(out.y, [[-s], [s]], [[hp(gamma(3)) * s]] * 2, "y")


def test_pytorch_itself_agrees_with_that_example():
    """The same example run through torch.nn.BatchNorm1d (float64): y within 4 roundings of exact."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e \".[torch]\")")
    bn = torch.nn.BatchNorm1d(1, momentum=1.0, affine=False, dtype=torch.float64).train()
    y = bn(torch.from_numpy(X_DOC)).detach().numpy()
    assert bn.running_mean.tolist() == [1.0]
    assert bn.running_var.tolist() == [2.0]
    s = 1 / HP.sqrt(1 + hp(1e-5))
    assert_within(y, [[-s], [s]], [[hp(gamma(4)) * s]] * 2, "torch y")
