"""Verdicts: a classification per quantity, never a single allclose."""

import numpy as np
import pytest

from bnconf.spec import Inputs, Mode, RunningStats, Verdict, convention, expected, judge, precision_for

TORCH = convention("torch.nn.functional.batch_norm")


def _inputs():
    x = np.random.default_rng(3).normal(1.0, 2.0, size=(64, 3)).astype(np.float32)
    return Inputs(x=x, axis=1, eps=1e-5, running=RunningStats.initial(3), momentum=0.1)


def _exact(i):
    return {q: e.value for q, e in expected(Mode.TRAIN_FORWARD, i, TORCH, precision_for("float32")).items()}


def test_the_oracle_itself_conforms_with_zero_error():
    i = _inputs()
    results = judge(Mode.TRAIN_FORWARD, _exact(i), i, TORCH, precision_for("float32"))
    assert all(c.verdict is Verdict.CONFORMS and c.max_ratio == 0 and c.max_ulp == 0 for c in results.values())


def test_a_nan_where_the_oracle_is_finite_is_never_masked():
    i = _inputs()
    observed = _exact(i)
    observed["y"] = observed["y"].copy()
    observed["y"][5, 1] = np.nan
    y = judge(Mode.TRAIN_FORWARD, observed, i, TORCH, precision_for("float32"))["y"]
    assert y.verdict is Verdict.NONFINITE_MISMATCH
    assert y.nonfinite_mismatches == 1 and "(5, 1)" in y.detail


def test_a_finite_value_where_the_oracle_is_nan_is_a_mismatch_too():
    """One value per channel: the Bessel-corrected running variance is undefined (0/0)."""
    x = np.array([[1.0, 2.0]])
    i = Inputs(x=x, axis=1, eps=1e-5, running=RunningStats.initial(2), momentum=0.1)
    rv = judge(Mode.TRAIN_FORWARD, {"running_var": np.array([0.9, 0.9])}, i, TORCH, precision_for("float64"))["running_var"]
    assert rv.verdict is Verdict.NONFINITE_MISMATCH


def test_comparison_reports_ratio_percentile_ulps_and_the_worst_element():
    i = _inputs()
    observed = _exact(i)
    y = observed["y"].astype(np.float32).astype(np.float64)
    result = judge(Mode.TRAIN_FORWARD, {"y": y}, i, TORCH, precision_for("float32"))["y"]
    assert result.verdict is Verdict.CONFORMS
    assert 0 < result.p99_ratio <= result.max_ratio <= 1
    assert 0 < result.max_ulp <= 0.5  # rounding to float32 moves by at most half an ULP
    assert result.observed == y[result.worst_index] and result.checked == y.size


def test_a_wrong_shape_is_a_clear_error():
    i = _inputs()
    with pytest.raises(ValueError, match=r"y: expected shape \(64, 3\)"):
        judge(Mode.TRAIN_FORWARD, {"y": np.zeros((3, 64))}, i, TORCH, precision_for("float32"))


def test_an_unknown_quantity_is_a_clear_error():
    with pytest.raises(ValueError, match="no quantity"):
        judge(Mode.EVAL_FORWARD, {"dx": np.zeros((64, 3))}, _inputs(), TORCH, precision_for("float32"))


def test_an_unexplained_error_is_non_conformant():
    i = _inputs()
    observed = _exact(i)
    result = judge(Mode.TRAIN_FORWARD, {"y": observed["y"] * 1.01}, i, TORCH, precision_for("float32"))["y"]
    assert result.verdict is Verdict.NON_CONFORMANT and result.max_ratio > 1
