"""Running statistics under any sequence of training steps, eval steps and resets (a Hypothesis state machine).

The machine and its test over the selected backends are the installed suite's (`bnconf.testing.test_state_machine`,
collected here over the built-ins and installed entry points, or `--bnconf-backend`); this file adds the plain-NumPy
reference and checks that the machine catches wrong counters and running-statistics mistakes.
"""

import pytest

from bnconf.conformance.mutants import REFERENCE, PlainNumpyBackend
from bnconf.spec import Mode
from bnconf.testing.test_state_machine import machine_for, pytest_generate_tests, test_state_machine  # noqa: F401


def test_the_plain_numpy_reference_follows_the_oracle():
    machine_for(REFERENCE)("runTest").runTest()


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
def test_the_state_machine_catches_running_statistics_mistakes(mistake, tmp_path, monkeypatch):
    from bnconf.conformance.mutants import MUTANTS

    monkeypatch.setenv("BNCONF_REPRO_DIR", str(tmp_path))
    with pytest.raises(AssertionError, match="running_(mean|var)") as failure:
        machine_for(MUTANTS[mistake].backend)("runTest").runTest()
    assert "train_forward, step" in str(failure.value).splitlines()[0]
    assert f"bnconf replay {tmp_path}" in str(failure.value)  # the failing step, saved


def test_the_state_machine_catches_an_eval_step_that_changes_the_statistics(tmp_path, monkeypatch):
    from pathlib import Path

    from bnconf.adapters.registry import load

    fixture = Path(__file__).parents[1] / "fixtures" / "stateful.py"
    good, = load(f"{fixture}:GOOD")
    machine_for(good)("runTest").runTest()  # returning them unchanged after eval is fine
    bad, = load(f"{fixture}:UPDATES_IN_EVAL")
    monkeypatch.setenv("BNCONF_REPRO_DIR", str(tmp_path))
    with pytest.raises(AssertionError, match="eval_forward, step .*: running_mean, running_var changed by an eval step"):
        machine_for(bad)("runTest").runTest()
