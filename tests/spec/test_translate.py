"""Translation between conventions: what matches after translation matches; what cannot is named and sized."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnconf.conformance import strategies as bst
from bnconf.spec import CONVENTIONS, ResidualKind, RunningStats, convention, forward_train, translate

TRACKING = [c for c in CONVENTIONS.values() if c.tracks_running_stats]
PAIRS = [(a, b) for a, b in itertools.permutations(TRACKING, 2)]


def test_pytorch_momentum_0_1_becomes_keras_momentum_0_9_with_the_same_eps():
    t = translate(convention("torch.nn.BatchNorm2d"), convention("keras.layers.BatchNormalization"), momentum=0.1, eps=1e-5)
    assert t.momentum == pytest.approx(0.9, abs=1e-15)
    assert t.eps == 1e-5
    assert t.axis == 1
    assert [r.kind for r in t.residuals] == [ResidualKind.RUNNING_VARIANCE_ESTIMATOR]


def test_the_bessel_residual_is_one_over_n_minus_one():
    t = translate(convention("torch.nn.BatchNorm1d"), convention("flax.linen.BatchNorm"))
    (r,) = t.residuals
    assert t.residual_size(r, n=1000) == pytest.approx(1 / 999)
    assert t.residual_size(r, n=2) == pytest.approx(1.0)


def test_cumulative_average_has_no_exponential_equivalent():
    t = translate(convention("torch.nn.BatchNorm2d"), convention("keras.layers.BatchNormalization"), momentum=None)
    assert ResidualKind.CUMULATIVE_AVERAGE in {r.kind for r in t.residuals}
    assert t.momentum is None


def test_an_api_without_running_statistics_is_named_as_such():
    t = translate(convention("torch.nn.BatchNorm2d"), convention("tf.nn.batch_normalization"))
    assert [r.kind for r in t.residuals] == [ResidualKind.NO_RUNNING_STATS]


def test_zero_debias_residual_is_the_initial_values_remaining_weight():
    t = translate(convention("flax.linen.BatchNorm"), convention("haiku.BatchNorm"), momentum=0.9)
    (r,) = t.residuals
    assert r.kind is ResidualKind.ZERO_DEBIAS
    assert t.residual_size(r, n=10, steps=3) == pytest.approx(0.9**3)


@pytest.mark.parametrize("source, target", PAIRS, ids=[f"{a.name}->{b.name}" for a, b in PAIRS])
@settings(max_examples=max(5, settings().max_examples // 10))  # 132 pairs: a tenth of the profile each
@given(data=st.data())
def test_quantities_without_a_residual_agree_exactly_after_translation(source, target, data):
    """Run both conventions' oracles on the same batches: unaffected quantities agree to float64 rounding,
    and a Bessel residual's size is exactly the ratio of the variances after a full-weight step."""
    momentum = data.draw(st.floats(0.05, 0.95))
    t = translate(source, target, momentum=momentum, eps=1e-3, axis=1)
    affected = {q for r in t.residuals for q in r.affects}
    shape = data.draw(bst.shapes(ranks=(2, 4), max_size=256).filter(lambda s: s[0] * int(np.prod(s[2:])) > 1))
    rs, rt = RunningStats.initial(shape[1]), RunningStats.initial(shape[1])
    for step in range(3):
        x = data.draw(bst.batches(shape, 1, allow_constant=False))
        a = forward_train(x, running=rs, convention=source, axis=1, eps=1e-3, momentum=momentum)
        b = forward_train(x, running=rt, convention=target, axis=t.axis, eps=t.eps, momentum=t.momentum)
        rs, rt = a.running, b.running
        outputs = {"y": (a.y, b.y), "running_mean": (rs.mean, rt.mean), "running_var": (rs.var, rt.var)}
        for q, (va, vb) in outputs.items():
            if q not in affected:
                np.testing.assert_allclose(vb, va, rtol=1e-12, atol=1e-12 * np.abs(va).max(), err_msg=q)
    if "running_var" in affected and {r.kind for r in t.residuals} == {ResidualKind.RUNNING_VARIANCE_ESTIMATOR}:
        assert not np.allclose(rs.var, rt.var, rtol=1e-9)


@pytest.mark.parametrize("n", [2, 10, 1000])
def test_the_bessel_residual_size_is_the_measured_difference_after_a_full_weight_step(n):
    torch_bn, keras_bn = convention("torch.nn.BatchNorm1d"), convention("keras.layers.BatchNormalization")
    t = translate(torch_bn, keras_bn, momentum=1.0, eps=1e-5)
    x = np.random.default_rng(n).normal(size=(n, 3))
    a = forward_train(x, running=RunningStats.initial(3), convention=torch_bn, axis=1, eps=1e-5, momentum=1.0)
    b = forward_train(x, running=RunningStats.initial(3), convention=keras_bn, axis=1, eps=t.eps, momentum=t.momentum)
    (r,) = t.residuals
    np.testing.assert_allclose(a.running.var / b.running.var - 1, t.residual_size(r, n=n), rtol=1e-12)


@pytest.mark.parametrize("source", ["keras.layers.BatchNormalization", "haiku.BatchNorm"])
def test_momentum_none_is_refused_where_it_is_not_a_cumulative_average(source):
    with pytest.raises(ValueError, match="needs a numeric momentum"):
        translate(convention(source), convention("torch.nn.BatchNorm2d"), momentum=None)


def test_running_statistics_only_on_the_target_side_are_a_residual():
    t = translate(convention("tf.nn.batch_normalization"), convention("torch.nn.BatchNorm2d"), eps=1e-3)
    assert [r.kind for r in t.residuals] == [ResidualKind.NO_RUNNING_STATS]


def test_a_different_bessel_divisor_floor_is_a_residual():
    t = translate(convention("torch.nn.BatchNorm2d"), convention("tf.compat.v1.nn.fused_batch_norm"))
    assert ResidualKind.BESSEL_DIVISOR in {r.kind for r in t.residuals}
