"""Synchronized replica backends against each other (conformance/replica_pairs.py): the NumPy reference against a
copy that declares Keras's convention (old-weight momentum 0.99, eps 1e-3, biased running variance, channels last)
differs as the spec predicts on running_var and matches everywhere else after translation, in both directions; the
equal-weight mutant against the reference is UNEXPECTED on unequal shards; a side that cannot express unequal shards,
runs on no common device, raises or crashes leaves its settings not comparable or in error with the reason; the run
pairs the backends after the last distributed cell, before they are closed. One slow check on two real frameworks."""

from dataclasses import replace

import numpy as np
import pytest

from bnconf.adapters.example_replicas import SimulatedSyncBatchNorm, chan_merge, partial_statistics
from bnconf.adapters.replica_protocol import ReplicaCrash
from bnconf.conformance import run
from bnconf.conformance.crosscheck import MATCHES, PREDICTED, UNEXPECTED
from bnconf.conformance.replica_mutants import MUTANTS
from bnconf.conformance.replica_pairs import failures, run_pair, run_replica_pairs
from bnconf.spec import convention
from bnconf.spec.replica_conventions import NUMPY_SYNC
from bnconf.spec.replicas import Semantics

OTHERS = ("y", "running_mean", "dx", "dgamma", "dbeta")


class KerasStyle(SimulatedSyncBatchNorm):
    """The reference under Keras's convention: running statistics m R + (1 - m) b with the biased batch variance."""

    name = "example.numpy.sync[keras convention]"
    convention = convention("keras.layers.BatchNormalization")

    def step(self, r):
        out = super().step(replace(r, running_mean=None, running_var=None))  # y, dx, dgamma, dbeta
        if r.running_mean is not None:
            dt = np.dtype(r.dtype)
            xs = [s.astype(dt) for s in r.shards]
            n, mean, m2 = chan_merge([partial_statistics(x, r.axis % x.ndim) for x in xs])
            m = dt.type(r.momentum)
            rm = m * r.running_mean.astype(dt) + (1 - m) * mean
            rv = m * r.running_var.astype(dt) + (1 - m) * (m2 / dt.type(n))
            out.running_mean, out.running_var = (rm,) * len(xs), (rv,) * len(xs)
        return out


def _verdicts(results) -> dict:
    """(world size, split) -> {quantity: verdict}."""
    return {(p.world_size, p.split): {r.quantity: r.verdict for r in p.rows} for p in results}


@pytest.mark.parametrize("order", ["reference first", "keras first"])
def test_a_biased_running_variance_differs_as_predicted_and_the_rest_matches(order):
    a, b = (SimulatedSyncBatchNorm(), KerasStyle())[:: 1 if order == "reference first" else -1]
    results = run_pair(a, b, 3, 0)
    assert [(p.world_size, p.split, p.dtype, p.status) for p in results] == [
        (2, "unequal", "float32", "ran"), (2, "equal", "float32", "ran"),
        (3, "unequal", "float32", "ran"), (3, "equal", "float32", "ran")]
    for setting, verdicts in _verdicts(results).items():
        assert verdicts["running_var"] == PREDICTED, setting
        assert all(verdicts[q] == MATCHES for q in OTHERS), (setting, verdicts)
    row = next(r for r in results[0].rows if r.quantity == "running_var")
    assert row.residuals.startswith("running variance estimator (predicted") and row.examples == 3
    assert 0 < row.max_relative < 0.2 and not failures(results)


def test_the_rank_four_case_moves_the_channel_axis_for_the_other_side():
    seen = []

    class Recording(KerasStyle):
        def step(self, r):
            seen.append((r.axis, np.shape(r.shards[0])))
            return super().step(r)

    (result,) = [p for p in run_pair(SimulatedSyncBatchNorm(), Recording(), 1, 0, world_sizes=(2,))
                 if p.split == "equal"]
    assert seen[-1] == (-1, (4, 2, 2, 3))  # channels last for Keras's convention, NCHW for the reference
    assert all(r.verdict in (MATCHES, PREDICTED) for r in result.rows)


def test_an_equal_weight_combine_is_unexpected_on_unequal_shards():
    mutant = next(m.backend for m in MUTANTS if m.backend.mistake == {"equal_weight_combine": True})
    verdicts = _verdicts(run_pair(SimulatedSyncBatchNorm(), mutant, 2, 0))
    assert verdicts[2, "unequal"]["y"] == UNEXPECTED and verdicts[3, "unequal"]["y"] == UNEXPECTED
    assert set(verdicts[2, "equal"].values()) == {MATCHES}  # equal shards: the rule is exact
    reasons = failures(run_pair(SimulatedSyncBatchNorm(), mutant, 1, 0))
    assert any(r.endswith(f"y: {UNEXPECTED}") and "W=2 unequal float32" in r for r in reasons)


def test_unequal_shards_an_api_cannot_express_leave_that_setting_not_comparable():
    class NoMask(SimulatedSyncBatchNorm):
        name = "no mask"
        replica = replace(NUMPY_SYNC, unequal_shards="it has no mask argument")

    results = run_pair(SimulatedSyncBatchNorm(), NoMask(), 1, 0, world_sizes=(2,))
    assert [(p.split, p.status) for p in results] == [("unequal", "not comparable"), ("equal", "ran")]
    assert "it has no mask argument" in results[0].reason and not failures(results)


def test_no_common_device_is_one_not_comparable_line_with_the_reason():
    class GpuOnly(SimulatedSyncBatchNorm):
        name = "gpu only"
        devices = ("cuda",)

        def unavailable(self, device):
            return "needs a CUDA device"

    (result,) = run_pair(SimulatedSyncBatchNorm(), GpuOnly(), 1, 0)
    assert result.status == "not comparable" and "cpu vs cuda" in result.reason


def test_a_side_that_raises_is_an_error_and_a_crashed_one_is_not_run_again():
    class Raising(SimulatedSyncBatchNorm):
        name = "raising"
        calls = 0

        def step(self, r):
            Raising.calls += 1
            raise self.error

    raising = Raising()
    raising.error = RuntimeError("boom")
    results = run_pair(SimulatedSyncBatchNorm(), raising, 1, 0, world_sizes=(2,))
    assert {p.status for p in results} == {"error"} and "raising: RuntimeError: boom" in results[0].reason
    assert any("error: raising: RuntimeError: boom" in r for r in failures(results))
    raising.error, Raising.calls = ReplicaCrash("replica 1 died"), 0
    results = run_replica_pairs([SimulatedSyncBatchNorm(), raising, KerasStyle()], 1, 0, world_sizes=(2,))
    assert Raising.calls == 1  # every later setting with it is not run
    by = {(p.source, p.target, p.split): p for p in results}
    assert by["example.numpy.sync", "raising", "unequal"].status == "error"
    later = by["raising", "example.numpy.sync[keras convention]", "equal"]
    assert later.status == "not comparable" and "raising crashed or timed out earlier" in later.reason
    assert by["example.numpy.sync", "example.numpy.sync[keras convention]", "equal"].status == "ran"


def test_per_replica_backends_are_not_paired():
    per_replica = KerasStyle()
    per_replica.replica = replace(NUMPY_SYNC, semantics=Semantics.PER_REPLICA)
    assert run_replica_pairs([SimulatedSyncBatchNorm(), per_replica], 1, 0) == []


def test_the_run_pairs_the_backends_after_the_last_cell_before_closing_them(tmp_path):
    events = []

    class Logged(KerasStyle):
        def step(self, r):
            events.append("step")
            return super().step(r)

        def close(self):
            events.append("close")

    options = run.RunOptions(1, 0, 1, None, isolated=False, edge_cases=False, replicas=True, world_sizes=(1, 2),
                             replica_examples=1, replica_dtypes=("float32",))
    state = run.RunState(0)
    run.execute([], [], options, state, tmp_path / "crashes", tmp_path / "cases",
                replica_backends=[SimulatedSyncBatchNorm(), Logged()])
    assert [(p.world_size, p.split, p.status) for p in state.replica_pairs] == [(2, "unequal", "ran"),
                                                                               (2, "equal", "ran")]
    assert events[-1] == "close" and events.count("close") == 1
    assert events.count("step") == len([c for c in state.replica_cells if c.backend == Logged.name]) + 2
    assert run.failures(state, []) == []
    state.replica_pairs[0].rows[0].verdict = UNEXPECTED
    assert len(run.failures(state, [])) == 1
    off = run.RunState(0)
    run.execute([], [], replace(options, pair_examples=0), off, tmp_path / "c2", tmp_path / "k2",
                replica_backends=[SimulatedSyncBatchNorm(), KerasStyle()])
    assert off.replica_cells and off.replica_pairs == []


@pytest.mark.slow
def test_naive_syncbn_and_keras_synchronized_agree_after_translation():
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    from bnconf.adapters.replica_registry import load_replicas
    from bnconf.conformance.replica_battery import close_backends

    naive = next(b for b in load_replicas("bnconf.adapters.torch_replicas:BACKENDS") if b.name == "naive SyncBN")
    keras = next(b for b in load_replicas("bnconf.adapters.keras_replicas:BACKENDS")
                 if b.name.startswith("keras.layers.BatchNormalization[synchronized"))
    for b in (naive, keras):
        if b.unavailable("cpu"):
            pytest.skip(b.unavailable("cpu"))
    try:
        results = run_pair(naive, keras, 1, 0, world_sizes=(2,))
    finally:
        close_backends([naive, keras])
    assert {p.status for p in results} == {"ran"}, [(p.status, p.reason) for p in results]
    rows = [r for p in results for r in p.rows]
    assert len(rows) == 12 and all(r.verdict in (MATCHES, PREDICTED) for r in rows), rows
