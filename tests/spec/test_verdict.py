"""Verdicts: a classification per quantity, never a single allclose."""

from dataclasses import replace

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


# ---------------------------------------------------------------- state: eval leaves the running statistics alone


def _eval_inputs(dy=False):
    rng = np.random.default_rng(5)
    running = RunningStats(np.array([0.25, -1.5, np.nan]), np.array([0.5, 2.0, 1.25]), 3)
    return Inputs(x=rng.normal(size=(16, 3)), axis=1, eps=1e-5, running=running, momentum=0.1,
                  dy=rng.normal(size=(16, 3)) if dy else None)


@pytest.mark.parametrize("mode", [Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD])
def test_eval_running_statistics_returned_as_given_conform_and_are_optional(mode):
    i = _eval_inputs(dy=mode is Mode.EVAL_BACKWARD)
    p = precision_for("float64")
    exact = {q: e.value for q, e in expected(mode, i, TORCH, p).items()}
    assert {"running_mean", "running_var"} <= set(exact)
    np.testing.assert_array_equal(exact["running_mean"], i.running.mean)  # NaN where NaN
    results = judge(mode, exact, i, TORCH, p)
    assert all(c.verdict is Verdict.CONFORMS for c in results.values()), results
    without = judge(mode, {q: v for q, v in exact.items() if not q.startswith("running")}, i, TORCH, p)
    assert "running_mean" not in without and all(c.verdict is Verdict.CONFORMS for c in without.values())


@pytest.mark.parametrize("mode", [Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD])
def test_eval_that_changes_the_running_statistics_by_one_ulp_or_a_nan_is_non_conformant_naming_them(mode):
    i = _eval_inputs(dy=mode is Mode.EVAL_BACKWARD)
    p = precision_for("float64")
    observed = {q: e.value.copy() for q, e in expected(mode, i, TORCH, p).items()}
    observed["running_var"][1] = np.nextafter(2.0, 3.0)  # one ulp: no bound admits it
    observed["running_mean"][2] = 0.0  # the given NaN replaced: a change too, not a non-finite mismatch
    results = judge(mode, observed, i, TORCH, p)
    words = mode.value.replace("_", " ")
    rv, rm = results["running_var"], results["running_mean"]
    assert rv.verdict is rm.verdict is Verdict.NON_CONFORMANT
    assert rv.detail.startswith(f"{words} changed the running statistics: running_var differs in 1 of 3")
    assert rv.worst_index == (1,) and rv.expected == 2.0 and rv.observed == np.nextafter(2.0, 3.0)
    assert "first channel 2" in rm.detail
    others = [q for q in results if not q.startswith("running")]
    assert all(results[q].verdict is Verdict.CONFORMS for q in others)  # the output is judged on its own


def test_eval_running_statistics_are_compared_after_the_declared_stats_format_rounding():
    """float16 data with float32 statistics: the given statistics are float32 values (engine.prepare rounds them),
    and a backend that keeps them in float16 changes them."""
    i = _eval_inputs()
    given = RunningStats(np.float32([0.1, -1.3, 0.7]).astype(np.float64), np.float32([0.3, 2.1, 1.1]).astype(np.float64), 3)
    i = Inputs(x=np.float16(i.x).astype(np.float64), axis=1, eps=1e-5, running=given)
    p = precision_for("float16", stats="float32")
    observed = {q: e.value for q, e in expected(Mode.EVAL_FORWARD, i, TORCH, p).items()}
    assert judge(Mode.EVAL_FORWARD, observed, i, TORCH, p)["running_mean"].verdict is Verdict.CONFORMS
    observed["running_mean"] = np.float16(given.mean).astype(np.float64)
    assert judge(Mode.EVAL_FORWARD, observed, i, TORCH, p)["running_mean"].verdict is Verdict.NON_CONFORMANT


def test_running_statistics_returned_by_a_call_given_none_are_non_conformant():
    i = replace(_inputs(), running=None)
    p = precision_for("float32")
    observed = {q: e.value for q, e in expected(Mode.TRAIN_FORWARD, i, TORCH, p).items()}
    observed["running_mean"] = observed["running_var"] = np.zeros(3)
    results = judge(Mode.TRAIN_FORWARD, observed, i, TORCH, p)
    assert results["running_mean"].verdict is Verdict.NON_CONFORMANT
    assert "given no running statistics" in results["running_var"].detail
    assert results["y"].verdict is Verdict.CONFORMS
