"""ULP figures that mean something (issue 16, item 3; SPEC.md section 4.9): distance in representable values at
the reference's magnitude, floored at the smallest normal, shown only where the error model promises relative
accuracy. A conforming quantity never shows more than ULP_LIMIT; a reference near zero or subnormal gives no
absurd figure; a real 3-ULP error reads as 3."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnconf.conformance import strategies as bst
from bnconf.spec import (Expected, Inputs, Mode, RunningStats, Verdict, compare, convention, expected, float_format,
                         precision_for)
from bnconf.spec.ulp import ULP_LIMIT, max_ulps, relative_error, spacing
from bnconf.spec.verdict import quantity_format, rounded_to_format

TORCH = convention("torch.nn.functional.batch_norm")
ACCEPTABLE = {Verdict.CONFORMS, Verdict.ILL_CONDITIONED}


def _expected(value, bound) -> Expected:
    value, bound = np.asarray(value, dtype=np.float64), np.asarray(bound, dtype=np.float64)
    none = np.zeros(value.shape, dtype=bool)
    return Expected(value=value, bound=bound, bound_one_pass=bound, ill=none, ill_one_pass=none)


@st.composite
def problems(draw, dtype: str):
    shape = draw(bst.shapes(max_batch=16, max_size=512))
    shape, axis = draw(bst.layouts(shape))
    c = shape[axis]
    gamma, beta = draw(bst.affine_params(c))
    rm, rv = draw(bst.running_stats_values(c))
    dy = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    return Inputs(x=draw(bst.batches(shape, axis, dtype)), axis=axis, eps=draw(bst.eps_values()), gamma=gamma,
                  beta=beta, running=RunningStats(rm, rv, 0), momentum=draw(bst.momenta()), dy=bst.round_to(dy, dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("mode", list(Mode))
@given(data=st.data())
def test_a_result_within_its_bound_never_shows_more_than_the_limit(dtype, mode, data):
    """The oracle's value moved by up to its bound at each element, in random directions (an element the float64
    sum would carry past its bound or the format's range stays put; the oracle's own overflow is Inf): conforming,
    and its ULP figure, where it has one, at most ULP_LIMIT."""
    i = data.draw(problems(dtype))
    p = precision_for(dtype)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    for q, e in expected(mode, i, TORCH, p).items():
        step = rng.choice([-1.0, -0.5, 0.5, 1.0], e.value.shape)
        moved = e.value + np.where(np.isfinite(e.bound), e.bound, 0.0) * step
        fmt = quantity_format(q, p)
        kept = (np.abs(moved - e.value) <= e.bound) & (np.abs(moved) <= float_format(fmt).max_value)
        observed = rounded_to_format(np.where(kept, moved, e.value), fmt)  # the oracle's own overflow: Inf
        c = compare(q, observed, e, fmt)
        assert c.verdict in ACCEPTABLE, (q, c.verdict, c.max_ratio)
        assert c.max_ulp is None or c.max_ulp <= ULP_LIMIT, (q, c.max_ulp)


def test_a_reference_near_zero_or_subnormal_gives_no_figure():
    """Errors of 1e-18 at references 0 and 1e-310 (float64): 1e305 and more spacings, but the bound there is
    absolute, so no figure; beside a normal element, the figure is that element's alone."""
    tiny = _expected([0.0, 1e-310], [1e-17, 1e-17])
    c = compare("dx", np.array([1e-18, 1e-310 + 1e-18]), tiny, "float64")
    assert c.verdict is Verdict.CONFORMS and c.max_ulp is None
    mixed = _expected([0.0, 1e-310, 1.5], [1e-17, 1e-17, 16 * np.spacing(1.5)])
    c = compare("dx", np.array([1e-18, 1e-310 + 1e-18, 1.5 + 2 * np.spacing(1.5)]), mixed, "float64")
    assert c.max_ulp == pytest.approx(2.0)


def test_cancellation_in_dx_gives_no_absurd_figure():
    """dy constant: dx = gamma s (dy - mean(dy) - z mean(dy z)) cancels to ~1e-17 in float64; an implementation
    that returns exact zeros conforms, and its figure (if any) stays within the limit instead of ~1e15."""
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, size=(32, 3))
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(3), beta=np.zeros(3), dy=np.full(x.shape, 0.7))
    e = expected(Mode.TRAIN_BACKWARD, i, TORCH, precision_for("float64"))["dx"]
    assert np.any(e.value != 0)  # the oracle's dx is rounding noise, not exactly zero
    c = compare("dx", np.zeros_like(e.value), e, "float64")
    assert c.verdict is Verdict.CONFORMS
    assert c.max_ulp is None or c.max_ulp <= ULP_LIMIT


def test_a_3_ulp_error_at_a_normal_value_reads_as_3():
    value = np.array([1.7, -0.3, 2.0**-120])
    e = _expected(value, 8 * spacing(value, "float32"))
    observed = value.copy()
    observed[1] += 3 * float(spacing(-0.3, "float32"))
    c = compare("y", observed, e, "float32")
    assert c.max_ulp == pytest.approx(3.0)


def test_a_3_ulp_error_in_the_oracles_y_reads_as_3():
    rng = np.random.default_rng(2)
    x = rng.normal(0.5, 1.5, size=(16, 2)).astype(np.float32).astype(np.float64)
    i = Inputs(x=x, axis=1, eps=1e-3, running=RunningStats(np.array([0.5, 0.1]), np.array([2.0, 1.0]), 0))
    e = expected(Mode.EVAL_FORWARD, i, TORCH, precision_for("float32"))["y"]
    observed = e.value.copy()
    at = np.unravel_index(np.argmax(np.abs(observed)), observed.shape)
    observed[at] += 3 * float(spacing(observed[at], "float32"))
    assert compare("y", observed, e, "float32").max_ulp == pytest.approx(3.0)


def test_the_spacing_is_floored_at_the_smallest_normal():
    assert spacing(0.0, "float16") == spacing(2.0**-14, "float16") == spacing(2.0**-20, "float16") == 2.0**-24
    assert spacing(1.0, "bfloat16") == 2.0**-7


def test_max_ulps_counts_only_elements_whose_bound_is_within_the_limit():
    value = np.array([1.0, 1.0])
    bound = np.array([4.0, 2 * ULP_LIMIT]) * spacing(value, "float32")
    observed = value + np.array([2.0, 1500.0]) * spacing(value, "float32")
    assert max_ulps(observed, value, bound, "float32") == pytest.approx(2.0)
    assert max_ulps(observed[1:], value[1:], bound[1:], "float32") is None


def test_relative_error_is_floored_at_the_smallest_normal():
    assert relative_error(1.5, 1.0, "float32") == 0.5
    assert relative_error(2.0**-126, 0.0, "float32") == 1.0
    c = compare("y", np.array([1.0, 2.5]), _expected([1.0, 2.0], [0.1, 0.1]), "float64")
    assert c.verdict is Verdict.NON_CONFORMANT and c.relative_error == 0.25 and c.outside == 1
