"""Under the 'onnx.BatchNormalization-15' convention the oracle agrees with onnx's reference implementation.

A one-node BatchNormalization (opset 15) model, run by onnx.reference.ReferenceEvaluator in float64, in
training mode (outputs Y, running_mean, running_var) and in inference mode (Y).

ONNX stores float attributes as float32: the model's epsilon and momentum are float32(eps) and
float32(momentum), so the oracle is given those same values.

Tolerance: both computations are bounded against the exact result, so they may differ by the sum of the
two bounds. The oracle's bounds are bnconf.conformance.exact's. The reference implementation computes
    mean = x.mean(), var = x.var()          (NumPy: sum / n; then the plain two-pass sum((x - mean)**2) / n)
    Y = scale * (x - mean) / sqrt(var + epsilon) + B
    running = input * momentum + current * (1 - momentum)
where the attributes arrive as numpy float32 scalars, so 1 - momentum is rounded to float32 (a surprise:
the oracle's weight is the exact 1 - float32(momentum)); that exactly known difference between the two
formulas moves the reference rather than widening the tolerance.
Its mean has the same bound as the oracle's. Its two-pass variance keeps the first-order effect of the
mean's error D: with e_i = x_i - m, sum e_i**2 = S + n delta**2 (|delta| <= D), and the squares and the
sum round by at most gamma(n + 2) of that, so |var - exact| <= D**2 + gamma(n + 2)(var + D**2), plus the
quotient's rounding. Y and the running statistics are bounded operation by operation with `Bounded`.
"""

from fractions import Fraction

import numpy as np
import onnx
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from bnconf.conformance.strategies import affine_params, batches, eps_values, momenta, running_stats_values, shapes
from bnconf.spec.conventions import ONNX_BATCHNORM
from bnconf.spec.oracle import RunningStats, forward_eval, forward_train
from bnconf.conformance import exact
from bnconf.conformance.exact import ETA, U, Bounded, assert_within, gamma, hp


INPUTS = ["X", "scale", "B", "input_mean", "input_var"]


def batchnorm_model(shape, *, training: bool, epsilon: float, momentum: float):
    """A checked one-node opset-15 model over float64 tensors of the given shape."""
    outputs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    node = helper.make_node(
        "BatchNormalization", INPUTS, outputs, epsilon=epsilon, momentum=momentum, training_mode=int(training)
    )
    c = shape[1]
    vi = lambda name, s: helper.make_tensor_value_info(name, TensorProto.DOUBLE, list(s))  # noqa: E731
    graph = helper.make_graph(
        [node],
        "batchnorm",
        [vi("X", shape)] + [vi(n, (c,)) for n in INPUTS[1:]],
        [vi("Y", shape)] + [vi(n, (c,)) for n in outputs[1:]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model, x, scale, bias, mean, var):
    feeds = dict(zip(INPUTS, (x, scale, bias, mean, var)))
    return ReferenceEvaluator(model).run(None, feeds)


@st.composite
def problems(draw):
    """NCHW inputs (ONNX's channel axis is 1) of ranks 2-5, ONNX's required scale and bias, running stats."""
    shape = draw(shapes(max_size=64))
    x = draw(batches(shape, 1))
    c = shape[1]
    scale, bias = draw(affine_params(c)) if draw(st.booleans()) else (np.ones(c), np.zeros(c))
    mean, var = draw(running_stats_values(c))
    return x, scale, bias, mean, var


def float32_attribute(v: float) -> float:
    return float(np.float32(v))


def two_pass_var_bound(st_: exact.ExactStats) -> Fraction:
    """|fl(sum fl((x_i - m)**2) / n) - var| for NumPy's var (see the module docstring)."""
    d = exact.mean_error_bound(st_)
    p_err = st_.n * d**2 + gamma(st_.n + 2) * (st_.sum_sq + st_.n * d**2) + st_.n * ETA
    return p_err / st_.n * (1 + U) + U * st_.var + ETA


@given(problem=problems(), eps=eps_values(), momentum=momenta())
def test_training_mode_matches_onnx_reference(problem, eps, momentum):
    """Y, running_mean and running_var of training_mode=1 equal the oracle's within both bounds."""
    x, scale, bias, mean0, var0 = problem
    eps32, m32 = float32_attribute(eps), float32_attribute(momentum)
    model = batchnorm_model(x.shape, training=True, epsilon=eps, momentum=momentum)
    y, running_mean, running_var = run(model, x, scale, bias, mean0, var0)
    out = forward_train(
        x, scale, bias, RunningStats(mean0, var0), convention=ONNX_BATCHNORM, axis=1, eps=eps32, momentum=m32
    )

    stats = exact.batch_stats(x, 1)
    flat = x.ravel()
    y_bound = exact.train_output_bounds(x, scale, bias, axis=1, eps=eps32).ravel()
    # ReferenceEvaluator hands the momentum attribute over as a numpy float32, so its 1 - momentum is
    # rounded to float32 (see the test below): the two formulas differ by an exactly known amount, which
    # moves the reference instead of widening the tolerance.
    w_onnx = float(np.float32(1) - np.float32(m32))
    w = 1 - Bounded(m32)
    reference = {"mean": [], "var": []}
    bounds = {"mean": [], "var": []}
    for c, (st_, idx) in enumerate(zip(stats, exact.channel_indices(x.shape, 1))):
        mean = Bounded(hp(st_.mean), hp(exact.mean_error_bound(st_)))
        var_onnx = Bounded(hp(st_.var), hp(two_pass_var_bound(st_)))
        var_oracle = Bounded(hp(st_.var), hp(exact.variance_error_bound(st_)))
        # ONNX's Y: scale * (x - mean) / sqrt(var + epsilon) + B
        denominator = (var_onnx + eps32).sqrt()
        for i in idx:
            y_bound[i] += (scale[c] * (Bounded(flat[i]) - mean) / denominator + bias[c]).err
        # ONNX: input * momentum + current * (1 - momentum);
        # the oracle: w = 1 - momentum, then (1 - w) * input + w * current
        for name, r0, got, current_onnx, current_oracle in [
            ("mean", mean0[c], running_mean[c], mean, mean),
            ("var", var0[c], running_var[c], var_onnx, var_oracle),
        ]:
            by_onnx = Bounded(r0) * m32 + current_onnx * w_onnx
            by_oracle = (1 - w) * r0 + w * current_oracle
            reference[name].append(hp(float(got)) + (by_oracle.value - by_onnx.value))
            bounds[name].append(by_onnx.err + by_oracle.err)

    assert_within(out.y, as_reference(y), y_bound.reshape(x.shape), "Y")
    assert_within(out.running.mean, reference["mean"], bounds["mean"], "running_mean")
    assert_within(out.running.var, reference["var"], bounds["var"], "running_var")

@given(problem=problems(), eps=eps_values())
def test_inference_mode_matches_onnx_reference(problem, eps):
    """training_mode=0 normalizes with input_mean and input_var, like the oracle's eval forward."""
    x, scale, bias, mean, var = problem
    eps32 = float32_attribute(eps)
    (y,) = run(batchnorm_model(x.shape, training=False, epsilon=eps, momentum=0.9), x, scale, bias, mean, var)
    got = forward_eval(x, scale, bias, RunningStats(mean, var), convention=ONNX_BATCHNORM, axis=1, eps=eps32)

    bound = exact.eval_output_bounds(x, scale, bias, mean, var, axis=1, eps=eps32).ravel()
    flat = x.ravel()
    for c, idx in enumerate(exact.channel_indices(x.shape, 1)):
        denominator = (Bounded(var[c]) + eps32).sqrt()
        for i in idx:
            bound[i] += (scale[c] * (Bounded(flat[i]) - mean[c]) / denominator + bias[c]).err
    assert_within(got, as_reference(y), bound.reshape(x.shape), "Y")


def test_onnx_stores_epsilon_and_momentum_as_float32():
    """The reason the oracle is given float32(eps): 1e-5 does not survive the model's attribute."""
    model = batchnorm_model((2, 1), training=True, epsilon=1e-5, momentum=0.9)
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["epsilon"] == float32_attribute(1e-5) != 1e-5
    assert attrs["momentum"] == float32_attribute(0.9) != 0.9


def test_onnx_reference_rounds_one_minus_momentum_to_float32():
    """A surprise worth knowing: with momentum 0.1 the reference weighs the batch mean by float32(0.9), not by
    1 - float32(0.1) as the operator's formula on the stored attribute says (the oracle's weight)."""
    model = batchnorm_model((1, 1), training=True, epsilon=1e-5, momentum=0.1)
    _, running_mean, _ = run(model, np.ones((1, 1)), np.ones(1), np.zeros(1), np.zeros(1), np.ones(1))
    assert running_mean.tolist() == [float(np.float32(0.9))] != [1 - float32_attribute(0.1)]


def as_reference(a):
    """onnx's float64 output as exact numbers, the reference side of `assert_within`."""
    a = np.asarray(a, dtype=np.float64)
    return np.array([hp(float(v)) for v in a.ravel()], dtype=object).reshape(a.shape)
