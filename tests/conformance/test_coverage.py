"""Coverage guaranteed per row (issue 16, item 4): every cell's examples cover each (affine on/off x running
statistics on/off) combination its backend and mode allow, round-robin by example index, so that each gets
floor(examples / combinations) examples (5 of 20 and 2 of 8 with four combinations); the cell records drawn and
judged examples per combination, and the rows of the running statistics and of dgamma/dbeta are judged in the
examples that have them."""

import numpy as np
import pytest

from bnconf.conformance.battery import least_judged, run_cell
from bnconf.conformance.cases import (combination_label, combinations, least_standardized_per_combination,
                                      least_per_combination, plan_for)
from bnconf.conformance.ideal import IdealBackend
from bnconf.conformance.mutants import REFERENCE
from bnconf.spec import Mode, convention

TORCH_MODULE = IdealBackend(convention("torch.nn.BatchNorm2d"))  # untracked eval uses the batch statistics
TORCH_FUNCTIONAL = IdealBackend(convention("torch.nn.functional.batch_norm"))  # eval needs running statistics
UNTRACKED = IdealBackend(convention("tf.nn.batch_normalization"))  # keeps no running statistics
ON_OFF = (False, True)


@pytest.mark.parametrize("backend, mode, pairs", [
    (TORCH_FUNCTIONAL, Mode.TRAIN_FORWARD, [(a, r) for r in ON_OFF for a in ON_OFF]),
    (TORCH_FUNCTIONAL, Mode.TRAIN_BACKWARD, [(a, r) for r in ON_OFF for a in ON_OFF]),
    (TORCH_FUNCTIONAL, Mode.EVAL_FORWARD, [(False, True), (True, True)]),
    (TORCH_MODULE, Mode.EVAL_BACKWARD, [(a, r) for r in ON_OFF for a in ON_OFF]),
    (UNTRACKED, Mode.TRAIN_FORWARD, [(False, False), (True, False)]),
    (UNTRACKED, Mode.EVAL_FORWARD, [(False, False), (True, False)]),
], ids=lambda v: getattr(v, "name", getattr(v, "value", "")) if not isinstance(v, list) else str(len(v)))
def test_the_combinations_are_those_the_backend_and_mode_allow(backend, mode, pairs):
    assert combinations(backend, mode) == pairs


def test_the_round_robin_gives_every_combination_its_share():
    combos = combinations(TORCH_FUNCTIONAL, Mode.TRAIN_FORWARD)
    for examples, least in ((8, 2), (20, 5)):
        counts = {}
        for i in range(examples):
            p = plan_for(i, combos)
            counts[(p.affine, p.running)] = counts.get((p.affine, p.running), 0) + 1
        assert set(counts) == set(combos) and min(counts.values()) == least
        assert least_per_combination(examples, TORCH_FUNCTIONAL, Mode.TRAIN_FORWARD) == least


CELLS = [(TORCH_FUNCTIONAL, m) for m in (Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD)]
CELLS += [(TORCH_MODULE, Mode.EVAL_BACKWARD), (UNTRACKED, Mode.TRAIN_FORWARD)]


@pytest.mark.parametrize("examples", [8, 20])
@pytest.mark.parametrize("backend, mode", CELLS, ids=lambda v: getattr(v, "name", getattr(v, "value", "")))
def test_every_combination_is_drawn_and_judged_at_least_its_share(backend, mode, examples):
    cell = run_cell(backend, "cpu", "float64", mode, examples, run_seed=0)
    labels = [combination_label(a, r) for a, r in combinations(backend, mode)]
    least = least_per_combination(examples, backend, mode)
    assert set(cell.coverage) == set(labels), cell.coverage
    assert sum(drawn for drawn, _ in cell.coverage.values()) == examples  # each example counted once
    assert all(drawn >= least and judged >= least for drawn, judged in cell.coverage.values()), cell.coverage
    assert least_judged(cell) >= least


@pytest.mark.parametrize("examples", [8, 20])
def test_running_statistics_and_parameter_gradients_are_judged_wherever_drawn(examples):
    """The quantities a combination adds are judged in at least that combination's share: running_mean and
    running_var in the training forward (half the combinations), dgamma and dbeta in the backward (returned by
    every call here, required where affine is on)."""
    forward = {r.quantity: r for r in run_cell(REFERENCE, "cpu", "float32", Mode.TRAIN_FORWARD, examples, 0).rows}
    for q in ("running_mean", "running_var"):
        assert forward[q].examples >= examples // 2 and forward[q].judged >= examples // 2, forward[q]
    backward = {r.quantity: r for r in run_cell(REFERENCE, "cpu", "float32", Mode.TRAIN_BACKWARD, examples, 0).rows}
    for q in ("dgamma", "dbeta"):
        assert backward[q].judged >= examples // 2, backward[q]


def test_a_cell_is_the_same_for_the_same_seed():
    first, second = (run_cell(REFERENCE, "cpu", "float32", Mode.TRAIN_FORWARD, 12, run_seed=3) for _ in range(2))
    assert first.coverage == second.coverage and first.nonfinite == second.nonfinite
    assert [(r.quantity, r.max_ratio, r.worst_input) for r in first.rows] == \
        [(r.quantity, r.max_ratio, r.worst_input) for r in second.rows]


def test_an_example_that_raises_is_drawn_but_not_judged():
    class RaisesWithoutGamma(type(REFERENCE)):
        def run(self, mode, r):
            if r.gamma is None:
                raise ValueError("this backend needs gamma")
            return super().run(mode, r)

    cell = run_cell(RaisesWithoutGamma("raises-without-gamma"), "cpu", "float32", Mode.TRAIN_FORWARD, 8, 0)
    assert cell.coverage[combination_label(False, True)] == [2, 0]
    assert cell.coverage[combination_label(True, True)] == [2, 2]
    assert least_judged(cell) == 0


def test_every_other_round_standardizes_channel_0_for_every_combination():
    combos = combinations(TORCH_FUNCTIONAL, Mode.TRAIN_FORWARD)
    for examples in (8, 20):
        standardized = {}
        for i in range(examples):
            p = plan_for(i, combos)
            standardized[(p.affine, p.running)] = standardized.get((p.affine, p.running), 0) + p.standardized
        least = least_standardized_per_combination(examples, TORCH_FUNCTIONAL, Mode.TRAIN_FORWARD)
        assert min(standardized.values()) == least == {8: 1, 20: 3}[examples]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_a_standardized_example_is_judged_whatever_else_was_drawn(mode, dtype):
    """Channel 0 standardized: its y (forward) or dx (backward) has elements with a bound under the declared half- or
    single-precision model, however offset the other channels and x's scale were drawn (conditioning up to 1e4)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from bnconf.conformance.cases import Plan, case_inputs
    from bnconf.spec import expected, precision_for

    quantity = "y" if mode in (Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD) else "dx"

    @settings(max_examples=40, database=None, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data):
        affine, running = data.draw(st.sampled_from(combinations(TORCH_MODULE, mode)))
        i = data.draw(case_inputs(TORCH_MODULE, mode, dtype, plan=Plan(affine, running, standardized=True)))
        e = expected(mode, i, TORCH_MODULE.convention, precision_for(dtype))[quantity]
        first = np.moveaxis(np.asarray(e.ill), i.axis, 0)[0]
        assert not first.all(), "channel 0 has no element with a bound"

    check()


class _HalfIdeal(IdealBackend):
    """The oracle as a float16 backend: judged under the float16 model, where ill-conditioning is common."""

    dtypes = ("float16",)


@pytest.mark.parametrize("examples", [8, 20])
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_every_combination_is_judged_at_least_its_standardized_share_in_half_precision(mode, examples):
    backend = _HalfIdeal(convention("torch.nn.BatchNorm2d"))
    cell = run_cell(backend, "cpu", "float16", mode, examples, run_seed=0)
    least = least_standardized_per_combination(examples, backend, mode)
    assert all(judged >= least for _, judged in cell.coverage.values()), cell.coverage


def test_a_cell_derives_no_database_key_from_its_source(monkeypatch):
    """A cell's Hypothesis run has no example database, so it must not pay for a key (Hypothesis digests the test
    function's source, about 6 ms a cell); the same seed still gives the same cell."""
    import hypothesis.core

    first = run_cell(TORCH_MODULE, "cpu", "float64", Mode.TRAIN_FORWARD, 4, 0)
    monkeypatch.setattr(hypothesis.core, "function_digest", lambda f: pytest.fail("a database key was derived"))
    again = run_cell(TORCH_MODULE, "cpu", "float64", Mode.TRAIN_FORWARD, 4, 0)
    assert [(r.quantity, r.max_ratio, r.worst_input) for r in first.rows] == \
           [(r.quantity, r.max_ratio, r.worst_input) for r in again.rows]
