"""Non-finite draws (issue 16, item 4): one example in eight (from index 3) puts NaN, +Inf or -Inf into a few
elements of one channel of x, or rescales one channel to the format's limits (close to its largest value, or
subnormal); they are judged by the normal comparison, whose non-finite semantics agree with the spec's edge
cases, and a backend that masks NaN to zero is NON-CONFORMANT in the battery and replays."""

import json
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnconf.adapters.protocol import declared_precision
from bnconf.adapters.registry import load
from bnconf.conformance.battery import run_cell
from bnconf.conformance.cases import (NONFINITE_KINDS, NONFINITE_SHARE, SPECIAL_KINDS, TRAINING, Plan, case_inputs,
                                      extreme_magnitude, nonfinite_at, nonfinite_count, nonfinite_kind, plan_for,
                                      with_nonfinite)
from bnconf.conformance.engine import assess
from bnconf.conformance.mutants import REFERENCE
from bnconf.reports.cli import main
from bnconf.spec import Mode, convention, expected, oracle
from bnconf.spec.edge_cases import CASES, kinds, kinds_agree
from bnconf.spec.formats import float_format

FIXTURE = Path(__file__).parents[1] / "fixtures" / "wrong.py"
TORCH = convention("torch.nn.functional.batch_norm")
QUICK = settings(max_examples=15, database=None, deadline=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


def _channels(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


# ---------------------------------------------------------------- the share and the kinds


def test_one_example_in_eight_is_non_finite_from_index_3():
    assert [i for i in range(40) if nonfinite_at(i)] == [3, 10, 17, 24, 39]
    for block in range(50):  # exactly one in every block of eight
        assert sum(nonfinite_at(i) for i in range(8 * block, 8 * block + 8)) == 1
    for examples in range(4, 400):
        assert examples // NONFINITE_SHARE <= nonfinite_count(examples) <= examples // NONFINITE_SHARE + 1
    assert [nonfinite_count(n) for n in (3, 4, 5, 8, 20)] == [0, 1, 1, 1, 3]


def test_the_non_finite_examples_fall_on_every_combination():
    combos = [(a, r) for r in (False, True) for a in (False, True)]
    hit = {(p.affine, p.running) for i in range(64) if (p := plan_for(i, combos)).nonfinite}
    assert hit == set(combos)


def test_two_non_finite_examples_give_one_special_and_one_extreme_kind_and_cells_cover_every_kind():
    for offset in range(20):
        first, second = nonfinite_kind(0, offset), nonfinite_kind(1, offset)
        assert {first in SPECIAL_KINDS, second in SPECIAL_KINDS} == {True, False}
    assert {nonfinite_kind(0, offset) for offset in range(10)} == set(NONFINITE_KINDS)


@pytest.mark.parametrize("examples", [8, 20])
def test_a_cell_draws_and_judges_its_share_of_non_finite_examples(examples):
    cell = run_cell(REFERENCE, "cpu", "float32", Mode.TRAIN_FORWARD, examples, run_seed=0)
    assert sum(drawn for drawn, _ in cell.nonfinite.values()) == nonfinite_count(examples)
    assert all(judged == drawn for drawn, judged in cell.nonfinite.values()), cell.nonfinite
    assert set(cell.nonfinite) <= set(NONFINITE_KINDS)
    if examples > 10:
        assert {k in SPECIAL_KINDS for k in cell.nonfinite} == {True, False}


# ---------------------------------------------------------------- what the draws put into x


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_nan_and_infinities_go_into_a_few_elements_of_one_channel(kind):
    x = np.random.default_rng(0).standard_normal((4, 3, 5))
    out = with_nonfinite(x, 1, "float32", kind, channel=2, seed=7)
    bad = ~np.isfinite(_channels(out, 1))
    assert bad[:2].sum() == 0 and 1 <= bad[2].sum() <= 3
    value = _channels(out, 1)[2][bad[2]]
    assert np.all(np.isnan(value)) if kind == "nan" else np.all(value == float(kind))


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_extreme_channels_reach_the_formats_limits(dtype):
    x = np.random.default_rng(1).standard_normal((16, 2))
    fmt = float_format(dtype)
    huge = _channels(with_nonfinite(x, 1, dtype, "huge", channel=1, seed=0), 1)
    peak = np.max(np.abs(huge[1]))
    assert np.all(np.isfinite(huge)) and peak == pytest.approx(extreme_magnitude("huge", dtype, 16), rel=1e-2)
    # 16 values summed, times |dy| <= 8, stay in range: within 2**7 of the format's largest (float16: computed in float32)
    assert peak >= fmt.max_value / 2**8 if dtype in ("float64", "float32", "float16") else peak > 1e36
    gained = _channels(with_nonfinite(x, 1, dtype, "huge", channel=1, seed=0, gain=1e4), 1)[1]
    assert np.max(np.abs(gained)) == pytest.approx(extreme_magnitude("huge", dtype, 16, gain=1e4), rel=1e-2)
    np.testing.assert_array_equal(huge[0], _channels(with_nonfinite(x, 1, dtype, "huge", 1, 0), 1)[0])
    tiny = _channels(with_nonfinite(x, 1, dtype, "tiny", channel=0, seed=0), 1)[0]
    assert 0 < np.max(np.abs(tiny)) < 2.0**fmt.min_exponent  # subnormal in the format


def _replayed(choices, mode: Mode, plan: Plan, seed: int = 0):
    """The inputs `case_inputs` draws from the choice sequence `choices` (Hypothesis internals; None: random ones)."""
    import random

    from hypothesis.control import BuildContext
    from hypothesis.internal.conjecture.data import ConjectureData

    data = ConjectureData(prefix=[], random=random.Random(seed)) if choices is None else ConjectureData.for_choices(choices)
    with BuildContext(data, wrapped_test=None), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.draw(case_inputs(REFERENCE, mode, "float32", plan=plan)), data.choices


@pytest.mark.parametrize("kind", NONFINITE_KINDS)
@pytest.mark.parametrize("mode", sorted(REFERENCE.modes, key=lambda m: m.value), ids=lambda m: m.value)
def test_a_plan_changes_only_what_it_plans(mode, kind):
    """The choices drawn under one plan, replayed under another, give the same case but for what the plan fixes (so
    Hypothesis sees the same draws whatever plan an example index gets): x in one channel, affine and running."""
    pytest.importorskip("hypothesis.internal.conjecture.data")
    for seed in range(5):
        plain, choices = _replayed(None, mode, Plan(False, False), seed)
        planned, again = _replayed(choices, mode, Plan(True, True, kind))
        assert again == choices
        assert (planned.x.shape, planned.axis, planned.eps, planned.momentum) == (plain.x.shape, plain.axis, plain.eps,
                                                                                 plain.momentum)
        assert planned.gamma is not None and plain.gamma is None
        assert planned.running is not None and (plain.running is None) == (mode in TRAINING)
        changed = ~((_channels(planned.x, planned.axis) == _channels(plain.x, plain.axis))).all(axis=1)
        assert changed.sum() <= 1


# ---------------------------------------------------------------- judging: the oracle is the spec's semantics


@pytest.mark.parametrize("case_id", ["nan-in-x", "inf-in-x"])
def test_the_oracle_and_the_edge_cases_agree_on_what_a_non_finite_channel_does(case_id):
    """Each quantity's non-finite pattern from the oracle (with the values the spec accepts in its place) is the edge
    case's: the affected channel alone, in every mode."""
    case = CASES[case_id]
    for mode in case.modes:
        inputs = case.inputs(mode, TORCH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = expected(mode, inputs, TORCH, declared_precision(REFERENCE, "float64", "cpu"))
        for q, e in values.items():
            pattern = case.pattern(mode, q)
            agree = kinds_agree(kinds(e.value), pattern)
            assert agree.all(), (mode, q, e.value, pattern)
            loose = pattern == 4  # Kind.NONFINITE: any non-finite value is right, which the comparison must accept
            accepted = np.zeros(pattern.shape, bool) if e.nonfinite_ok is None else np.broadcast_to(e.nonfinite_ok, pattern.shape)
            assert np.array_equal(loose & ~np.isnan(e.value), loose & accepted & ~np.isnan(e.value)), (mode, q)


def test_an_updating_mean_that_gives_nan_for_an_infinite_channel_conforms():
    """+Inf in a channel: its batch mean is +Inf by IEEE sums and NaN by an updating (Welford) mean; the spec
    accepts both in saved_mean and running_mean, and nothing else changes."""
    case = CASES["inf-in-x"]
    inputs = case.inputs(Mode.TRAIN_FORWARD, TORCH)
    p = declared_precision(REFERENCE, "float64", "cpu")
    from bnconf.spec import judge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = expected(Mode.TRAIN_FORWARD, inputs, TORCH, p)
        observed = {q: e.value.copy() for q, e in values.items()}
        for q in ("saved_mean", "running_mean"):
            observed[q][0] = np.nan
        assert all(c.verdict.value == "conforms" for c in judge(Mode.TRAIN_FORWARD, observed, inputs, TORCH, p).values())
        observed["saved_mean"][1] = np.nan  # a finite channel's mean is not free
        assert judge(Mode.TRAIN_FORWARD, observed, inputs, TORCH, p)["saved_mean"].verdict.value == "non-finite mismatch"


def _judged(mode, observed_change, inputs, dtype="float32"):
    """judge() on the oracle's own values with `observed_change(values)` applied: the verdicts per quantity."""
    from bnconf.spec import judge, precision_for

    p = precision_for(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        observed = {q: e.value.copy() for q, e in expected(mode, inputs, TORCH, p).items()}
        observed_change(observed)
        return {q: c.verdict.value for q, c in judge(mode, observed, inputs, TORCH, p).items()}


def test_an_overflowing_batch_variance_may_make_the_running_variance_nan():
    """float32 values near 1e35 (variance 1e70, beyond float32) with momentum 0: the running variance held as
    0 * Inf = NaN is accepted, the exact (unchanged) value too; NaN in the other channel is not."""
    from bnconf.spec import Inputs, RunningStats

    x = np.stack([np.array([1e35, -1e35, 3e34, 0.0]), np.arange(4.0)], axis=1)
    i = Inputs(x=x, axis=1, eps=1e-5, running=RunningStats(np.zeros(2), np.ones(2), 1), momentum=0.0)

    def nan_in(channel):
        def change(o):
            o["running_var"][channel] = np.nan
        return change

    assert _judged(Mode.TRAIN_FORWARD, nan_in(0), i)["running_var"] == "conforms"
    assert _judged(Mode.TRAIN_FORWARD, lambda o: None, i)["running_var"] == "conforms"
    assert _judged(Mode.TRAIN_FORWARD, nan_in(1), i)["running_var"] == "non-finite mismatch"


def test_an_underflowing_folded_coefficient_may_make_an_infinite_input_nan_in_eval():
    """eval y at x = -Inf: +Inf for gamma * s > 0; a gamma of 1.4e-45 makes the float32 coefficient gamma * s 0,
    so NaN is accepted there, and only there."""
    from bnconf.spec import Inputs, RunningStats

    x = np.array([[-np.inf, -np.inf], [1.0, 2.0]])
    i = Inputs(x=x, axis=1, eps=1e-3, gamma=np.array([-1.401298464324817e-45, -1.0]), beta=np.ones(2),
               running=RunningStats(np.zeros(2), np.full(2, 9.84), 0))

    def nan_at(channel):
        def change(o):
            o["y"][0, channel] = np.nan
        return change

    assert _judged(Mode.EVAL_FORWARD, nan_at(0), i)["y"] == "conforms"
    assert _judged(Mode.EVAL_FORWARD, nan_at(1), i)["y"] == "non-finite mismatch"


def test_the_oracle_holds_values_near_the_largest_float64():
    """Statistics of values near float64's largest: the mean exact for a constant channel, the variance Inf (beyond
    the range) rather than NaN, and finite gradients."""
    x = np.stack([np.full(11, -8.17133243e306), np.linspace(-1e304, 1e304, 11), np.arange(11.0)], axis=1)
    s = oracle.batch_stats(x, 1)
    assert s.mean[0] == -8.17133243e306 and s.var[0] == 0.0
    assert s.var[1] == np.inf and s.var[2] == pytest.approx(10.0)
    g = oracle.backward_train(np.ones_like(x) + np.arange(11.0)[:, None], x, None, convention=TORCH, axis=1, eps=1e-5)
    assert np.all(np.isfinite(g.dx)) and np.all(np.isfinite(g.dgamma))


@pytest.mark.parametrize("dtype", REFERENCE.dtypes)
@pytest.mark.parametrize("kind", NONFINITE_KINDS)
@pytest.mark.parametrize("mode", sorted(REFERENCE.modes, key=lambda m: m.value), ids=lambda m: m.value)
def test_an_ieee_implementation_conforms_on_every_kind(mode, kind, dtype):
    """Plain NumPy, whose NaN and Inf propagate as IEEE arithmetic has them, conforms on non-finite draws."""

    @QUICK
    @given(st.data())
    def check(data):
        affine, running = data.draw(st.booleans()), data.draw(st.booleans())
        inputs = data.draw(case_inputs(REFERENCE, mode, dtype, plan=Plan(affine, running, kind)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problems = assess(REFERENCE, mode, inputs, dtype, "cpu").problems()
        assert not problems, {q: c.detail for q, c in problems.items()}

    check()


# ---------------------------------------------------------------- a backend that masks NaN


def test_a_backend_that_masks_nan_is_non_conformant_and_its_case_replays(tmp_path, capsys):
    target = f"{FIXTURE}:MASKS_NAN"
    assert main(["report", "--backend", target, "--examples", "20", "--no-edge-cases", "--pair-examples", "0",
                 "--out", str(tmp_path), "--name", "m"]) == 1
    doc = json.loads((tmp_path / "m.json").read_text())
    bad = [(c["mode"], r) for c in doc["cells"] for r in c["rows"] if r["verdict"] == "NON-CONFORMANT"]
    assert {mode for mode, _ in bad} >= {"train_forward", "train_backward"}, bad
    assert all(r["failure"] == "non-finite mismatch" for _, r in bad), bad
    capsys.readouterr()
    line = bad[0][1]["replay"]
    assert main(shlex.split(line)[1:]) == 1
    assert "still fails" in capsys.readouterr().out


def test_the_same_backend_conforms_without_non_finite_draws():
    """Only the non-finite examples catch it: the first three examples of a cell are finite."""
    masks_nan = load(f"{FIXTURE}:MASKS_NAN")[0]
    cell = run_cell(masks_nan, "cpu", "float64", Mode.TRAIN_FORWARD, 3, run_seed=0)
    assert not cell.nonfinite and all(r.verdict.value != "NON-CONFORMANT" for r in cell.rows)
