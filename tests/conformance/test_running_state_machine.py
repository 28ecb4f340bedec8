"""Running statistics under any sequence of training steps, eval steps and resets (a Hypothesis state machine).

After every step the backend's running mean, variance and batch counter equal the oracle's, within the
error model's bound accumulated over the steps, and an eval step never changes them. The counter is the
one the backend reports (`Outputs.batches_seen`, where it reports one): the invariant compares it with the
oracle's after every step, eval steps and resets included. Where a known
discrepancy covers a training step (e.g. update ops forgotten), the oracle follows the recorded behaviour.
"""

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bnconf.adapters.protocol import channel_axes, declared_precision, unavailable
from bnconf.conformance import selection
from bnconf.conformance import strategies as bst
from bnconf.conformance.discrepancies import REGISTRY, covering
from bnconf.conformance.engine import prepare, request
from bnconf.conformance.mutants import REFERENCE, PlainNumpyBackend
from bnconf.spec import Inputs, Mode, RunningStats, Verdict, expected, judge

DTYPE, DEVICE, CHANNELS = "float32", "cpu", 3


def pytest_generate_tests(metafunc):
    """Every stateful backend the run selects (--bnconf-backend / BNCONF_BACKENDS), else the built-ins and
    the plain-NumPy reference."""
    if "backend" in metafunc.fixturenames:
        targets = selection.choice(metafunc.config.getoption("bnconf_backend"), "backend")
        found = selection.backends(targets)[0] + ([] if targets else [REFERENCE])
        stateful = [b for b in found if {Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD} <= b.modes
                    and b.convention.tracks_running_stats and DTYPE in b.dtypes and not unavailable(b, DEVICE)]
        metafunc.parametrize("backend", stateful, ids=[b.name for b in stateful])


def machine_for(backend):
    precision = declared_precision(backend, DTYPE, DEVICE)
    shape_rank = min(r for r in getattr(backend, "ranks", backend.convention.ranks) if r >= 2)
    axis = channel_axes(backend)[0]
    shape = [6, *[2] * (shape_rank - 2)]
    shape.insert(axis % shape_rank, CHANNELS)
    shape = tuple(shape)
    momenta = [0.1, 0.9] + ([None] if backend.convention.cumulative_average else [])

    class RunningStatistics(RuleBasedStateMachine):
        @initialize(momentum=st.sampled_from(momenta))
        def start(self, momentum):
            self.momentum = momentum
            self.reset()

        @rule()
        def reset(self):
            self.backend_state = self.oracle_state = RunningStats.initial(CHANNELS)
            self.error = RunningStats(np.zeros(CHANNELS), np.zeros(CHANNELS))

        def _inputs(self, x, state, error=None):
            return prepare(Inputs(x=x, axis=axis, eps=1e-5, running=state, momentum=self.momentum, running_error=error), precision)

        @rule(x=bst.batches(shape, axis, allow_constant=False, max_log10_condition=2.0))
        def train_step(self, x):
            out = backend.run(Mode.TRAIN_FORWARD, request(self._inputs(x, self.backend_state), DTYPE, DEVICE))
            oracle_inputs = self._inputs(x, self.oracle_state, self.error)
            convention, p = backend.convention, precision
            entry = covering(REGISTRY, backend.name, Mode.TRAIN_FORWARD, DTYPE, DEVICE, oracle_inputs)
            count = self.oracle_state.count + 1
            seen = count if out.batches_seen is None else out.batches_seen  # the backend's own counter
            if entry is not None and entry.unchecked is not None and np.any(entry.unchecked(oracle_inputs)):
                # the record claims nothing about this step: carry on from the backend's statistics
                self.backend_state = self.oracle_state = RunningStats(out.running_mean, out.running_var, seen)
                self.error = RunningStats(np.zeros(CHANNELS), np.zeros(CHANNELS))
                return
            if entry is not None:  # the recorded behaviour, for the quantities the entry names
                oracle_inputs, convention, p = entry.recorded_model(oracle_inputs, convention, precision)
            exp = expected(Mode.TRAIN_FORWARD, oracle_inputs, convention, p)
            results = judge(Mode.TRAIN_FORWARD, out.quantities(), oracle_inputs, convention, p)
            bad = {q: f"{c.verdict.value} {c.detail} (error/bound {c.max_ratio:.3g})" for q, c in results.items()
                   if c.verdict is not Verdict.CONFORMS}
            assert not bad, bad
            self.backend_state = RunningStats(out.running_mean, out.running_var, seen)  # counts_agree checks seen
            self.oracle_state = RunningStats(exp["running_mean"].value, exp["running_var"].value, count)
            self.error = RunningStats(exp["running_mean"].bound, exp["running_var"].bound)

        @precondition(lambda self: self.oracle_state.count > 0)
        @rule(x=bst.batches(shape, axis, allow_constant=False, max_log10_condition=2.0))
        def eval_step(self, x):
            out = backend.run(Mode.EVAL_FORWARD, request(self._inputs(x, self.backend_state), DTYPE, DEVICE))
            assert out.running_mean is None and out.running_var is None, "eval returned updated running statistics"
            if out.batches_seen is not None:  # a counter reported by an eval step must be the one it was given
                self.backend_state = RunningStats(self.backend_state.mean, self.backend_state.var, out.batches_seen)

        @invariant()
        def counts_agree(self):
            if hasattr(self, "backend_state"):
                assert self.backend_state.count == self.oracle_state.count, (
                    f"batches_seen: the backend counts {self.backend_state.count} training steps, "
                    f"the oracle {self.oracle_state.count}")

    RunningStatistics.TestCase.settings = settings(max_examples=max(5, settings().max_examples // 6), stateful_step_count=12, deadline=None)
    return RunningStatistics.TestCase


def test_running_statistics_follow_the_oracle_through_any_sequence(backend):
    machine_for(backend)("runTest").runTest()


class CountingBackend(PlainNumpyBackend):
    """The plain-NumPy reference reporting its batch counter, counting `per_step` per training step and
    `per_eval` per eval step (a correct backend: 1 and 0)."""

    def __init__(self, name, per_step=1, per_eval=0):
        super().__init__(name)
        self.per_step, self.per_eval = per_step, per_eval

    def run(self, mode, r):
        out = super().run(mode, r)
        if r.running_mean is not None and mode in (Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD):
            out.batches_seen = r.batches_seen + (self.per_step if mode is Mode.TRAIN_FORWARD else self.per_eval)
        return out


def test_a_backend_that_counts_its_training_steps_follows_the_oracle():
    machine_for(CountingBackend("counts"))("runTest").runTest()


@pytest.mark.parametrize("per_step, per_eval", [(0, 0), (2, 0), (1, 1)], ids=["never", "twice", "in-eval"])
def test_the_state_machine_catches_a_wrong_batch_counter(per_step, per_eval):
    with pytest.raises(AssertionError, match="batches_seen: the backend counts"):
        machine_for(CountingBackend("miscounts", per_step, per_eval))("runTest").runTest()


@pytest.mark.parametrize("mistake", ["running statistics not updated", "momentum style reversed", "biased running variance"])
def test_the_state_machine_catches_running_statistics_mistakes(mistake):
    from bnconf.conformance.mutants import MUTANTS

    with pytest.raises(AssertionError, match="running_(mean|var)"):
        machine_for(MUTANTS[mistake].backend)("runTest").runTest()
