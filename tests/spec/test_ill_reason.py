"""Ill-conditioned elements come with a reason (issue 16, item 2; SPEC.md section 4.8): how many elements and
channels, and for the worst channel which condition leaves no first-order bound and what drives it."""

import re

import numpy as np

from bnconf.spec import Inputs, Mode, RunningStats, Verdict, compare, convention, expected, precision_for
from bnconf.spec.verdict import quantity_format

TORCH = convention("torch.nn.functional.batch_norm")
RNG = np.random.default_rng(1)


def _reasons(mode: Mode, inputs: Inputs, precision) -> dict[str, str]:
    """Each quantity's ill_reason when the implementation returns the oracle's value itself."""
    out = {}
    for q, e in expected(mode, inputs, TORCH, precision).items():
        out[q] = compare(q, e.value, e, quantity_format(q, precision)).ill_reason
    return out


def _two_channels(second: np.ndarray, dtype=np.float64) -> np.ndarray:
    return np.stack([RNG.normal(1.0, 1.0, second.size), second], axis=1).astype(dtype).astype(np.float64)


def test_large_mean_over_std_in_float16_arithmetic_names_the_ratio_n_and_format():
    x = _two_channels(RNG.normal(1000.0, 1.0, 32), np.float16)
    p = precision_for("float16", compute="float16")
    reasons = _reasons(Mode.TRAIN_FORWARD, Inputs(x=x, axis=1, eps=1e-5), p)
    y = reasons["y"]
    assert y.startswith("32 of 64 element(s) unchecked, 1 of 2 channel(s); channel 1: error bound of var + eps ")
    assert re.search(r"\|mean\|/std = [0-9.]+e\+0[23], n = 32, eps = 1e-05, float16 arithmetic$", y), y
    assert reasons["saved_mean"] == "" and reasons["saved_var"] == ""  # their bounds hold however large


def test_a_constant_channel_is_named_constant_never_a_ratio_of_zero():
    x = _two_channels(np.full(32, 3000.0))
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), dy=RNG.normal(size=x.shape))
    reasons = _reasons(Mode.TRAIN_BACKWARD, i, precision_for("float16"))
    for q in ("dx", "dgamma"):
        assert "constant channel, |mean| = 3e+03, eps = 1e-05, n = 32" in reasons[q]
        assert "|mean|/std" not in reasons[q]


def test_an_overflowing_sum_names_the_intermediate_and_its_format():
    x = _two_channels(RNG.normal(1000.0, 1.0, 256), np.float16)
    reasons = _reasons(Mode.TRAIN_FORWARD, Inputs(x=x, axis=1, eps=1e-5), precision_for("float16", compute="float16"))
    assert "channel 1: sum |x| = 2.56e+05 overflows float16 (largest 6.55e+04)" in reasons["y"]
    assert "overflows float16" in reasons["saved_var"]  # the variance's own bound needs its sums to fit


def test_eval_names_the_given_variance_against_eps():
    x = RNG.normal(size=(8, 2))
    i = Inputs(x=x, axis=1, eps=0.0, running=RunningStats(np.zeros(2), np.array([1e-44, 1.0]), 0))
    assert "channel 0: " in (y := _reasons(Mode.EVAL_FORWARD, i, precision_for("float32"))["y"])
    assert "given var = 1e-44, eps = 0, float32 arithmetic" in y


def test_a_well_conditioned_problem_has_no_reason():
    x = _two_channels(RNG.normal(0.0, 2.0, 64))
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), dy=RNG.normal(size=x.shape))
    assert set(_reasons(Mode.TRAIN_BACKWARD, i, precision_for("float32")).values()) == {""}


def test_the_reason_of_a_wholly_ill_conditioned_quantity_comes_with_its_verdict():
    x = np.full((16, 1), 3000.0)
    p = precision_for("float16")
    e = expected(Mode.TRAIN_FORWARD, Inputs(x=x, axis=1, eps=1e-5), TORCH, p)["saved_invstd"]
    c = compare("saved_invstd", e.value, e, quantity_format("saved_invstd", p))
    assert c.verdict is Verdict.ILL_CONDITIONED and c.checked == 0 and c.max_ulp is None
    assert c.ill_reason.startswith("1 of 1 element(s) unchecked, 1 of 1 channel(s); channel 0: ")
    assert "constant channel" in c.ill_reason
