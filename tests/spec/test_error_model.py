"""The error model, in both directions.

A correct float32/float16/bfloat16 implementation stays inside the bound on every generated input,
long reductions and large |mean|/std included; a semantically wrong one falls far outside it and is
named; the unstable one-pass variance is told apart from both.
"""

import numpy as np
import pytest
from hypothesis import given, target
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from bnconf.conformance import strategies as bst
from bnconf.spec import (
    NUMPY_PAIRWISE,
    Inputs,
    Mode,
    RunningStats,
    Verdict,
    convention,
    judge,
    precision_for,
)
from bnconf.conformance import plain_numpy as impl

TORCH = convention("torch.nn.functional.batch_norm")  # new-weight momentum, Bessel-corrected running var
ACCEPTABLE = {Verdict.CONFORMS, Verdict.ILL_CONDITIONED}


@st.composite
def problems(draw, dtype, max_log10_condition=4.0, max_size=4096, max_batch=64):
    shape = draw(bst.shapes(max_batch=max_batch, max_size=max_size))
    shape, axis = draw(bst.layouts(shape))
    x = draw(bst.batches(shape, axis, dtype, max_log10_condition))
    c = shape[axis]
    # Parameters as the implementation holds them (float32, or float64 for float64 inputs).
    params = "float64" if dtype == "float64" else "float32"
    gamma, beta = (bst.round_to(a, params) for a in draw(bst.affine_params(c)))
    rm, rv = (bst.round_to(a, params) for a in draw(bst.running_stats_values(c)))
    dy = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    return Inputs(
        x=x,
        axis=axis,
        eps=draw(bst.eps_values()),
        gamma=gamma,
        beta=beta,
        running=RunningStats(rm, rv, 0),
        momentum=draw(bst.momenta()),
        dy=bst.round_to(dy, dtype),
    )


def _train(i: Inputs, **switches):
    return impl.train(
        i.x, i.gamma, i.beta, i.running.mean, i.running.var, axis=i.axis, eps=i.eps, new_weight=i.momentum, **switches
    )


def _assert_within(results):
    if currently_in_test_context():
        target(max(c.max_ratio for c in results.values()), label="max error / bound")
    bad = {q: (c.verdict.value, c.max_ratio, c.detail) for q, c in results.items() if c.verdict not in ACCEPTABLE}
    assert not bad, bad


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@given(data=st.data())
def test_a_correct_two_pass_training_forward_stays_within_the_bound(dtype, data):
    i = data.draw(problems(dtype))
    compute = "float64" if dtype == "float64" else "float32"
    out = _train(i, compute=compute)
    _assert_within(judge(Mode.TRAIN_FORWARD, out, i, TORCH, precision_for(dtype, summation=NUMPY_PAIRWISE)))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@given(data=st.data())
def test_a_correct_training_backward_stays_within_the_bound(dtype, data):
    i = data.draw(problems(dtype))
    compute = "float64" if dtype == "float64" else "float32"
    out = impl.backward(i.dy, i.x, i.gamma, axis=i.axis, eps=i.eps, compute=compute)
    _assert_within(judge(Mode.TRAIN_BACKWARD, out, i, TORCH, precision_for(dtype, summation=NUMPY_PAIRWISE)))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@given(data=st.data())
def test_a_correct_folded_eval_forward_stays_within_the_bound(dtype, data):
    i = data.draw(problems(dtype))
    out = impl.evaluate(i.x, i.gamma, i.beta, i.running.mean, i.running.var, axis=i.axis, eps=i.eps)
    _assert_within(judge(Mode.EVAL_FORWARD, out, i, TORCH, precision_for(dtype)))


@pytest.mark.parametrize("n", [2**17, 10**6])
@pytest.mark.parametrize("log10_condition", [0, 2, 3])
def test_long_reductions_stay_within_the_bound_and_every_element_is_checked(n, log10_condition):
    """A million values per channel in float32, well and badly conditioned, under the bound of NumPy's
    pairwise summation, which the implementation uses: no element is excused as ill-conditioned."""
    means = np.array([10.0**log10_condition, -(10.0**log10_condition)])
    x = bst.values_with_moments((n, 2), 1, means, np.ones(2), seed=n + log10_condition, dtype="float32")
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), running=RunningStats.initial(2), momentum=0.1)
    results = judge(Mode.TRAIN_FORWARD, _train(i), i, TORCH, precision_for("float32", summation=NUMPY_PAIRWISE))
    assert all(c.verdict is Verdict.CONFORMS for c in results.values())
    assert results["y"].checked == x.size and results["y"].ill_conditioned == 0


def test_an_undeclared_summation_at_a_long_reduction_checks_nothing_and_says_so():
    """The worst-case (recursive) bound at n = 1e6 and |mean|/std = 20 is larger than the variance: y is
    ill-conditioned, not 'conforming', and garbage is not explained as an unstable algorithm."""
    x = bst.values_with_moments((10**6, 2), 1, np.array([20.0, -20.0]), np.ones(2), 3, "float32")
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), running=RunningStats.initial(2), momentum=0.1)
    out = _train(i)
    out["y"] = out["y"] * 1.5
    y = judge(Mode.TRAIN_FORWARD, out, i, TORCH, precision_for("float32"))["y"]
    assert y.verdict is Verdict.ILL_CONDITIONED and y.checked == 0


# --------------------------------------------------------------- semantic differences stand far outside


def _well_conditioned(n=1000, c=3, eps=1e-3, seed=0):
    x = bst.values_with_moments((n, c), 1, np.array([0.5, -1.0, 2.0])[:c], np.ones(c), seed, "float32")
    return Inputs(x=x, axis=1, eps=eps, gamma=np.ones(c), beta=np.zeros(c), running=RunningStats.initial(c), momentum=0.1)


@pytest.mark.parametrize(
    "switch, quantity, name",
    [
        ({"running_unbiased": False}, "running_var", "running variance biased instead of unbiased"),
        ({"momentum_reversed": True}, "running_mean", "momentum applied the wrong way round"),
        ({"eps_outside": True}, "y", "eps outside the square root"),
    ],
)
def test_a_semantic_difference_in_float32_stands_far_outside_the_bound_and_is_named(switch, quantity, name):
    """1,000 values per channel, eps=1e-3: each mistake is at least 10x its bound (worst-case summation order)."""
    i = _well_conditioned()
    result = judge(Mode.TRAIN_FORWARD, _train(i, **switch), i, TORCH, precision_for("float32"))[quantity]
    assert result.verdict is Verdict.CONVENTION_DIFFERENCE
    assert result.detail.startswith(name)
    assert result.max_ratio > 10


def test_the_same_mistakes_stand_hundreds_of_bounds_outside_for_a_tree_reduction():
    i = _well_conditioned()
    p = precision_for("float32", summation=NUMPY_PAIRWISE)
    for switch, quantity in [({"running_unbiased": False}, "running_var"), ({"eps_outside": True}, "y")]:
        assert judge(Mode.TRAIN_FORWARD, _train(i, **switch), i, TORCH, p)[quantity].max_ratio > 100


@given(log10_condition=st.floats(2.0, 2.8), seed=st.integers(0, 2**32 - 1))
def test_a_one_pass_variance_is_classified_as_an_unstable_algorithm(log10_condition, seed):
    """E[x^2] - E[x]^2 in float32 at |mean|/std ~ 100-600: outside the stable bound, inside the one-pass one."""
    k = 10.0**log10_condition
    x = bst.values_with_moments((4096, 2), 1, np.array([k, -k]), np.ones(2), seed, "float32")
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), running=RunningStats.initial(2), momentum=0.1)
    results = judge(Mode.TRAIN_FORWARD, _train(i, one_pass=True), i, TORCH, precision_for("float32", summation=NUMPY_PAIRWISE))
    verdicts = {c.verdict for c in results.values()}
    assert Verdict.NON_CONFORMANT not in verdicts and Verdict.CONVENTION_DIFFERENCE not in verdicts
    assert results["saved_var"].verdict in (Verdict.UNSTABLE_ALGORITHM, Verdict.NONFINITE_MISMATCH)


def test_a_one_pass_variance_is_not_blamed_when_the_channel_is_well_conditioned():
    i = _well_conditioned()
    results = judge(Mode.TRAIN_FORWARD, _train(i, one_pass=True), i, TORCH, precision_for("float32"))
    assert all(c.verdict is Verdict.CONFORMS for c in results.values())


def _float16_problem(n, mean):
    x = bst.values_with_moments((n, 2), 1, np.array([1.0, mean]), np.ones(2), 7, "float16")
    return Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), running=RunningStats.initial(2), momentum=0.1)


def test_float16_accumulation_at_extreme_conditioning_is_ill_conditioned_not_a_wider_bound():
    """Statistics computed in float16 with |mean|/std = 1e3: no first-order bound exists; said so per element."""
    i = _float16_problem(32, 1e3)
    p = precision_for("float16", compute="float16")
    y = judge(Mode.TRAIN_FORWARD, _train(i, compute="float16"), i, TORCH, p)["y"]
    assert y.ill_conditioned == 32  # the second channel, every element
    assert y.checked == 32  # the first channel keeps its bound
    assert y.verdict is Verdict.CONFORMS


def test_a_float16_sum_that_overflows_is_a_nonfinite_mismatch_never_masked():
    """256 values of ~1000 summed in float16 overflow to Inf: the NaN output is reported, not excused."""
    i = _float16_problem(256, 1e3)
    p = precision_for("float16", compute="float16")
    y = judge(Mode.TRAIN_FORWARD, _train(i, compute="float16"), i, TORCH, p)["y"]
    assert y.verdict is Verdict.NONFINITE_MISMATCH
    assert y.nonfinite_mismatches == 256


def test_an_output_beyond_the_format_range_is_expected_to_round_to_infinity():
    """y = -95346 in float16 correctly rounds to -Inf; a finite answer there is the mismatch."""
    x = np.array([[-1000.0, 0.5]], dtype=np.float16)
    i = Inputs(x=x, axis=1, eps=1e-5, running=RunningStats(np.zeros(2), np.array([1e-4, 1.0])))
    ok = impl.evaluate(x, np.ones(2), np.zeros(2), i.running.mean, i.running.var, axis=1, eps=1e-5)
    assert np.isneginf(ok["y"][0, 0])
    assert judge(Mode.EVAL_FORWARD, ok, i, TORCH, precision_for("float16"))["y"].verdict is Verdict.CONFORMS
    saturated = {"y": np.array([[-65504.0, ok["y"][0, 1]]])}
    assert judge(Mode.EVAL_FORWARD, saturated, i, TORCH, precision_for("float16"))["y"].verdict is Verdict.NONFINITE_MISMATCH


def test_a_result_at_the_float16_overflow_threshold_may_round_either_way():
    """y = 65519.9987 +- 32 in float16: both Inf (PyTorch's answer) and 65504 are correct roundings."""
    x = np.array([[65504.0, 1.0]], np.float16)
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2, np.float32), beta=np.array([16.326172, 0.0], np.float32),
               running=RunningStats(np.zeros(2, np.float32), np.ones(2, np.float32)))
    for y0 in (np.inf, 65504.0):
        observed = {"y": np.array([[y0, 1.0]])}
        assert judge(Mode.EVAL_FORWARD, observed, i, TORCH, precision_for("float16"))["y"].verdict is Verdict.CONFORMS
    wrong_sign = {"y": np.array([[-np.inf, 1.0]])}
    assert judge(Mode.EVAL_FORWARD, wrong_sign, i, TORCH, precision_for("float16"))["y"].verdict is Verdict.NONFINITE_MISMATCH


def test_a_subnormal_variance_in_float32_stays_within_the_bound():
    """std 1e-21: squares of the deviations are float32 subnormals; eps = 0 leaves nothing to hide behind."""
    x = bst.values_with_moments((64, 1), 1, np.array([0.0]), np.array([1e-21]), 1, "float32")
    i = Inputs(x=x, axis=1, eps=0.0, gamma=np.ones(1), beta=np.zeros(1))
    out = impl.train(x, i.gamma, i.beta, np.zeros(1), np.ones(1), axis=1, eps=0.0, new_weight=0.1)
    out = {q: out[q] for q in ("y", "saved_mean", "saved_var", "saved_invstd")}
    _assert_within(judge(Mode.TRAIN_FORWARD, out, i, TORCH, precision_for("float32")))


@pytest.mark.parametrize("decay", [0.99, 0.999, 0.9999])
def test_a_hidden_state_zero_debiased_average_stays_within_the_bound(decay):
    """Haiku/TF compute h_t / (1 - d**t) in float32; 1 - d**t cancels for d near 1, and the bound knows it."""
    haiku, f = convention("haiku.BatchNorm"), np.float32
    d = f(decay)
    x1, x2 = (bst.values_with_moments((256, 2), 1, np.array([3.0, -1.0]), np.ones(2), s, "float32") for s in (1, 2))
    m1, m2 = x1.mean(axis=0, dtype=f), x2.mean(axis=0, dtype=f)
    h = (f(1) - d) * m1
    a1 = h / (f(1) - d)
    h = d * h + (f(1) - d) * m2
    a2 = h / (f(1) - d ** f(2))
    i = Inputs(x=x2, axis=1, eps=1e-5, running=RunningStats(a1.astype(np.float64), np.ones(2), 1), momentum=float(d))
    assert judge(Mode.TRAIN_FORWARD, {"running_mean": a2}, i, haiku, precision_for("float32"))["running_mean"].verdict is Verdict.CONFORMS


# ---------------------------------------------------------------- eps and momentum held in a narrower format


def test_round_to_format_matches_numpy_and_ml_dtypes_rounding():
    from bnconf.spec.error_model import round_to_format

    rng = np.random.default_rng(15)
    values = np.concatenate([rng.standard_normal(4000) * 10.0 ** rng.integers(-45, 40, 4000),
                             [1e-5, 1e-3, 0.1, 65519.9, 65520.0, 7e4, 3e-8, 2.0**-25, -0.0, np.inf, np.nan]])
    formats = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
    try:
        import ml_dtypes

        formats["bfloat16"] = ml_dtypes.bfloat16
    except ImportError:
        pass
    for fmt, t in formats.items():
        with np.errstate(over="ignore"):
            reference = values.astype(t).astype(np.float64)
        got = np.array([round_to_format(v, fmt) for v in values])
        np.testing.assert_array_equal(got, reference, err_msg=fmt)


def test_declared_attributes_round_eps_and_momentum_and_default_to_exact():
    p = precision_for("float64", attributes="float32")
    assert p.attributes == "float32" and p.attribute(1e-5) == float(np.float32(1e-5)) != 1e-5
    assert p.attribute(None) is None and p.attribute(0.5) == 0.5
    assert precision_for("float64").attributes is None and precision_for("float64").attribute(1e-5) == 1e-5
    with pytest.raises(ValueError, match="float17"):
        precision_for("float64", attributes="float17")


def _float64_problem(seed: int) -> Inputs:
    x = bst.values_with_moments((32, 3), 1, np.array([0.5, -2.0, 10.0]), np.array([0.01, 0.003, 1.0]), seed, "float64")
    return Inputs(x=x, axis=1, eps=1e-3, gamma=np.array([1.5, -0.7, 2.0]), beta=np.array([0.1, 0.0, -3.0]),
                  running=RunningStats(np.array([1.0, -1.0, 3.0]), np.array([0.5, 2.0, 4.0]), 0), momentum=0.1)


def _switched_train(i: Inputs, **kw):
    out = impl.train(i.x, i.gamma, i.beta, i.running.mean, i.running.var, axis=i.axis, **kw)
    return {q: out[q] for q in ("y", "running_mean", "running_var")}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_float32_eps_and_momentum_fail_the_exact_float64_model_and_pass_the_declared_one(seed):
    """The same float64 outputs: NON-CONFORMANT (y and the running statistics) when eps and momentum are taken
    as exact, conforming once they are the float32 values the implementation holds (what engine.prepare gives
    both sides under `attributes="float32"`)."""
    i = _float64_problem(seed)
    out = _switched_train(i, compute="float64", eps=float(np.float32(i.eps)), new_weight=float(np.float32(i.momentum)))
    exact = judge(Mode.TRAIN_FORWARD, out, i, TORCH, precision_for("float64"))
    assert {q for q, c in exact.items() if c.verdict not in ACCEPTABLE} == {"y", "running_mean", "running_var"}
    p = precision_for("float64", attributes="float32")
    held = Inputs(x=i.x, axis=i.axis, eps=p.attribute(i.eps), gamma=i.gamma, beta=i.beta, running=i.running,
                  momentum=p.attribute(i.momentum))
    _assert_within(judge(Mode.TRAIN_FORWARD, out, held, TORCH, p))


def test_a_mixed_layout_holds_the_parameters_in_the_parameter_format():
    from bnconf.spec.error_model import layout_name, split_layout, with_parameters

    assert split_layout("float16/float32") == ("float16", "float32") and layout_name("float16", "float32") == "float16/float32"
    assert split_layout("float16") == ("float16", None) and layout_name("float16") == "float16"
    with pytest.raises(ValueError, match="float17"):
        split_layout("float16/float17")
    p = with_parameters(precision_for("float16", stats="float16"), "float32")
    assert (p.dtype, p.compute, p.stats) == ("float16", "float32", "float32")
    assert with_parameters(p, None) is p


def _flush(a: np.ndarray) -> np.ndarray:
    """float32 with subnormals flushed to zero (XLA:CPU's and TensorFlow's FTZ)."""
    a = a.astype(np.float32)
    return np.where(np.abs(a) < np.finfo(np.float32).tiny, np.float32(0), a)


def test_a_gradient_formed_as_gamma_dy_first_that_underflows_under_ftz_stays_within_the_bound():
    """Autodiff forms the chain rule's d(z) = gamma dy first, then scales by s = 1/sqrt(var + eps): with gamma at
    the smallest normal float32 (2**-126) and |dy| < 1, gamma dy is flushed to 0 or to a normal, off by up to
    2**-126 per element, and s = 1000 then scales that error (Keras on JAX, bfloat16, replayed from a report's
    finding). The bound must hold for this legitimate order as for gamma s first."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 8, 1)) * 1e-3 + 8e-4).astype(np.float32).astype(np.float64)
    dy = rng.uniform(-2.4, 2.4, (16, 8, 1)).astype(np.float32).astype(np.float64)
    gamma, eps = np.array([-np.finfo(np.float32).tiny], dtype=np.float64), 1.5601654115567248e-08
    i = Inputs(x=x, axis=-1, eps=eps, gamma=gamma, beta=np.ones(1), dy=dy)
    mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    s = 1 / np.sqrt(var + eps)
    z = (x - mean) * s
    d_z = _flush(dy * gamma).astype(np.float64)  # formed first, flushed
    dx = s * (d_z - d_z.mean(axis=(0, 1)) - z * (d_z * z).mean(axis=(0, 1)))
    observed = {"dx": dx.astype(np.float32), "dgamma": (dy * z).sum(axis=(0, 1)).astype(np.float32),
                "dbeta": dy.sum(axis=(0, 1)).astype(np.float32)}
    precision = precision_for("float32", flush_subnormals=True)
    keras = convention("keras.layers.BatchNormalization")
    result = judge(Mode.TRAIN_BACKWARD, observed, i, keras, precision)
    assert result["dx"].verdict in ACCEPTABLE, result["dx"]
