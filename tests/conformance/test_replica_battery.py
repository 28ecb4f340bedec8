"""The distributed part of a run (conformance/replica_battery.py): the correct NumPy reference conforms in every
cell, each labelled mutant fails its cells with the right named mistake, unsupported cells say why, a replica
that hangs or crashes ends only its cell (no process survives), known discrepancies and their staleness, the
overall verdict, the interrupted run, and the replay of a saved example."""

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bnconf.adapters.example_replicas import SimulatedSyncBatchNorm
from bnconf.adapters.replica_registry import discover_replicas, load_replicas
from bnconf.conformance import replica_battery as rb
from bnconf.conformance import run
from bnconf.conformance.known.replicas import ReplicaDiscrepancy
from bnconf.conformance.replica_cases import SPLITS, Split, case_seed, sharded_case, splits_at
from bnconf.conformance.replica_mutants import MUTANTS
from bnconf.conformance.replica_repro import load_case, main as replay_main
from bnconf.conformance.replica_results import ReplicaCell, ReplicaRow
from bnconf.spec import precision_for
from bnconf.spec.replica_conventions import NUMPY_SYNC

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAULTS = f"{FIXTURES / 'replica_faults.py'}:BACKENDS"
MUTANT = {m.backend.name: m for m in MUTANTS}


class Reference(SimulatedSyncBatchNorm):
    """The NumPy reference under another name, with a replica record, world sizes or availability of our choice."""

    def __init__(self, name="test.reference", replica=NUMPY_SYNC, world_sizes=(1, 2, 3, 4), why_not=None):
        self.name, self.replica, self.world_sizes, self.why_not = name, replica, world_sizes, why_not
        self.closed = 0

    def unavailable(self, device):
        return self.why_not

    def close(self):
        self.closed += 1


def _cells(backend, examples=2, **kw):
    return rb.run_replicas([backend], examples, 0, **kw)


def _by(cells):
    return {(c.world_size, c.split): c for c in cells}


# ---------------------------------------------------------------- cases


def test_every_split_exists_where_it_should_and_world_size_one_has_equal_and_one_value():
    assert splits_at(1) == (Split.EQUAL, Split.ONE_VALUE)
    assert all(splits_at(w) == SPLITS for w in (2, 3, 4))
    assert Split.UNEQUAL.rows(3) == (6, 2, 7) and Split.EMPTY.rows(4) == (6, 0, 7, 3)
    assert Split.ONE_VALUE.rows(4) == (1, 1, 1, 1) and Split.LARGE_MEAN.rows(3) == Split.EQUAL.rows(3)


def test_cases_are_deterministic_and_exact_in_the_format():
    b = Reference()
    p = precision_for("float32")
    seed = case_seed(7, b.name, 3, Split.UNEQUAL, "float32", 1)
    a, again = sharded_case(b.convention, p, Split.UNEQUAL, 3, seed), sharded_case(b.convention, p, Split.UNEQUAL, 3, seed)
    assert a.rows == (6, 2, 7) and a.dys is not None
    for s, t in zip(a.shards, again.shards):
        np.testing.assert_array_equal(s, t)
        np.testing.assert_array_equal(s, s.astype(np.float32).astype(np.float64))
    other = sharded_case(b.convention, p, Split.UNEQUAL, 3, case_seed(8, b.name, 3, Split.UNEQUAL, "float32", 1))
    assert not np.array_equal(a.shards[0], other.shards[0])


# ---------------------------------------------------------------- verdicts


def test_the_reference_conforms_in_every_cell():
    cells = _cells(Reference())
    assert len(cells) == 2 * (2 + 3 * 5) and {c.dtype for c in cells} == {"float32", "float64"}
    for c in cells:
        if (c.world_size, c.split) == (1, Split.ONE_VALUE.value):
            # one value in all: a Bessel-corrected running variance is 0/0, which it refuses (a spec edge case)
            assert c.status == "unsupported" and "refused" in c.reason
            continue
        assert c.status == "ran" and c.conforms, (c, c.rows)
        assert [r.quantity for r in c.rows] == list(rb.QUANTITIES)
        assert all(r.examples == 2 and r.judged == 2 for r in c.rows)
    assert run.replica_failures(cells) == []


@pytest.mark.parametrize("name", ["mutant.sync.equal_weight", "mutant.sync.local_bessel",
                                  "mutant.sync.backward_not_count_weighted"])
def test_each_mutant_fails_its_unequal_cells_with_the_mistake_named(name):
    mutant = MUTANT[name]
    cells = _by(rb.run_replicas([mutant.backend], 2, 0, world_sizes=(1, 2, 3)))
    for w in (2, 3):
        c = cells[(w, Split.UNEQUAL.value)]
        row = next(r for r in c.rows if r.quantity == mutant.flags)
        assert not row.accepted and row.mistake == mutant.diagnosis, row
        assert row.max_ratio > 1 and row.worst.startswith("replica ") == (row.quantity in ("y", "dx", "running_var"))
    assert cells[(1, Split.EQUAL.value)].conforms  # one replica: nothing to combine, nothing wrong
    reasons = run.replica_failures(cells.values())
    assert any(mutant.diagnosis in r and "unequal" in r for r in reasons)


def test_unsupported_cells_give_their_reason_and_do_not_fail_the_run():
    no_mask = replace(NUMPY_SYNC, unequal_shards="no mask argument", empty_shard="no mask argument")
    cells = _by(_cells(Reference(replica=no_mask, world_sizes=(1, 2)), world_sizes=(1, 2, 3)))
    assert cells[(2, "unequal")].status == "unsupported" and "no mask argument" in cells[(2, "unequal")].reason
    assert cells[(2, "empty shard")].status == "unsupported" and "no mask argument" in cells[(2, "empty shard")].reason
    assert cells[(2, "equal")].conforms and cells[(2, "large |mean|/std")].conforms
    assert all(c.status == "unsupported" and "3 replicas are not supported" in c.reason
               for (w, _), c in cells.items() if w == 3)
    gpu = _cells(Reference(why_not="GPU-only: needs a CUDA device"), world_sizes=(2,))
    assert {c.status for c in gpu} == {"unsupported"} and all("GPU-only" in c.reason for c in gpu)
    assert run.replica_failures(list(cells.values()) + gpu) == []


def test_a_float64_cell_where_the_backend_declares_it_and_unsupported_where_not():
    cells = rb.run_replicas([Reference()], 1, 0, world_sizes=(2,), dtypes=("float64", "float16"))
    assert {c.dtype for c in cells if c.status == "ran"} == {"float64"}
    assert all("float16" in c.reason for c in cells if c.dtype == "float16")


# ---------------------------------------------------------------- faults


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hung_or_crashed_replica_ends_only_its_cell_and_no_process_survives(tmp_path):
    (backend,) = load_replicas(FAULTS)  # hangs at world size 3 on unequal shards, crashes at 2 on an empty one
    cells = _by(rb.run_replicas([backend], 1, 0, cases_dir=tmp_path))
    hung, crashed = cells[(3, "unequal")], cells[(2, "empty shard")]
    assert hung.status == "timed out" and "did not answer" in hung.reason
    assert crashed.status == "crashed" and "exit code 7" in crashed.reason
    for c in (hung, crashed):
        assert c.replay.startswith("python -m bnconf.conformance.replica_repro ")
        case, inputs = load_case(c.replay.split()[-1])
        assert (case["world_size"], case["split"]) == (c.world_size, c.split) and list(inputs.rows) == c.rows_per_replica
    after = [c for (w, s), c in cells.items() if (w, s) not in ((3, "unequal"), (2, "empty shard")) and w > 1]
    assert after and all(c.status == "ran" and c.conforms for c in after)
    assert backend.closed == 1 and backend.pids and not [p for p in backend.pids if _alive(p)]
    reasons = run.replica_failures(cells.values())
    assert len(reasons) == 2 and any("timed out" in r for r in reasons) and any("crashed" in r for r in reasons)


def test_a_backend_failing_cell_after_cell_is_skipped_after_three():
    class Broken(Reference):
        def step(self, r):
            raise RuntimeError("device lost")

    cells = _cells(Broken(), examples=1)
    statuses = [c.status for c in cells]
    assert statuses[:3] == ["error"] * 3 and set(statuses[3:]) == {"skipped"}
    assert "RuntimeError: device lost" in cells[0].reason


def test_outputs_bnconf_cannot_judge_make_an_error_cell():
    class Complex(Reference):
        def step(self, r):
            out = super().step(r)
            out.y = tuple(y.astype(np.complex64) for y in out.y)
            return out

    (c,) = rb.run_replicas([Complex()], 1, 0, world_sizes=(2,))[:1]
    assert c.status == "error" and "cannot judge" in c.reason


def test_backends_are_closed_when_the_run_is_interrupted():
    a, b = Reference("test.a"), Reference("test.b")
    seen = []

    def stop(cell):
        seen.append(cell)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rb.run_replicas([a, b], 1, 0, on_cell=stop)
    assert len(seen) == 1 and a.closed == b.closed == 1


# ---------------------------------------------------------------- known discrepancies


def _record(**kw):
    fields = dict(id="test-equal-weight", backends="mutant.sync.equal_weight", quantities=rb.QUANTITIES,
                  hypothesis="combine weighted as if shards were equal", explanation="weighs replicas equally",
                  evidence="mutant", source="conformance/replica_mutants.py", splits=("unequal", "equal"))
    return ReplicaDiscrepancy(**{**fields, **kw})


def test_a_record_of_what_the_backend_does_makes_the_failure_a_known_discrepancy_and_flags_stale_use():
    mutant = MUTANT["mutant.sync.equal_weight"].backend
    record = _record()
    cells = _by([rb.run_replica_cell(mutant, 2, s, "float32", 2, 0, records=(record,))
                 for s in (Split.EQUAL, Split.UNEQUAL)])
    unequal = cells[(2, "unequal")]
    verdicts = {r.quantity: r.verdict for r in unequal.rows}
    assert unequal.conforms and verdicts.pop("dbeta") == "conforms"  # sum(dy) needs no statistics
    assert set(verdicts.values()) == {"known discrepancy"} and unequal.discrepancies == {record.id: [2, 2]}
    assert all(r.known == record.id for r in unequal.rows if r.quantity != "dbeta")
    assert cells[(2, "equal")].discrepancies == {record.id: [2, 0]}  # covered, never needed there
    assert run.replica_failures(cells.values()) == []
    stale = rb.run_replica_cell(MUTANT["mutant.sync.local_bessel"].backend, 2, Split.UNEQUAL, "float32", 1, 0,
                                records=(replace(record, backends="mutant.sync.local_bessel"),))
    assert stale.discrepancies == {record.id: [1, 1]} and not stale.conforms  # the record does not describe it


def test_a_record_that_no_longer_holds_leaves_the_failure_non_conformant():
    wrong = _record(hypothesis="running variance Bessel-corrected with the local count")
    c = rb.run_replica_cell(MUTANT["mutant.sync.equal_weight"].backend, 2, Split.UNEQUAL, "float32", 1, 0,
                            records=(wrong,))
    assert not c.conforms and any(r.mistake == "combine weighted as if shards were equal" for r in c.rows)


def test_discrepancy_use_reports_stale_records(monkeypatch):
    from bnconf.conformance.known import replicas as known

    mutant = MUTANT["mutant.sync.equal_weight"].backend
    monkeypatch.setattr(known, "ENTRIES", (_record(splits=("equal",)),))
    cells = rb.run_replicas([mutant], 1, 0, world_sizes=(2,), dtypes=("float32",))
    (use,) = rb.replica_discrepancy_use(cells, [mutant])
    assert use["status"].startswith("STALE: covered 1 example")


# ---------------------------------------------------------------- the run


def test_execute_runs_the_distributed_part_and_its_failures_fail_the_run(tmp_path):
    options = run.RunOptions(1, 0, 0, None, isolated=False, edge_cases=False, replicas=True, world_sizes=(2,),
                             replica_examples=1, replica_dtypes=("float32",))
    state = run.RunState(0)
    arrivals = []
    run.execute([], [], options, state, tmp_path / "crashes", tmp_path / "cases", on_change=lambda: arrivals.append(1),
                replica_backends=[Reference(), MUTANT["mutant.sync.local_bessel"].backend])
    assert len(state.replica_cells) == 10 == len(arrivals) and state.phase is run.Phase.DONE
    reasons = run.failures(state, [])
    assert reasons and all(r.startswith("mutant.sync.local_bessel world size 2") for r in reasons)
    assert any("running variance Bessel-corrected with the local count" in r for r in reasons)
    assert any(c.replay for c in state.replica_cells if not c.conforms)
    assert (tmp_path / "cases" / "replicas").is_dir()


FIXTURE = Path(__file__).parents[1] / "fixtures" / "misbehaving.py"


def _isolated_run(tmp_path, replica_backend, on_change, jobs=2):
    """An isolated run of the ideal fixture backend's float64 cells with `jobs` workers and a distributed part
    on `replica_backend` (world size 2); `on_change(state)` after each result."""
    from bnconf.adapters.registry import load
    from bnconf.conformance import selection
    from bnconf.conformance.isolation import Limits

    found = load(f"{FIXTURE}:GOOD")
    cells = selection.cells(found, ["cpu"], ["float64"])
    options = run.RunOptions(1, 0, 0, Limits(600.0), edge_cases=False, replicas=True, world_sizes=(2,),
                             replica_examples=1, replica_dtypes=("float32",), jobs=jobs)
    state = run.RunState(len(cells))
    run.execute(found, cells, options, state, tmp_path / "crashes", tmp_path / "cases",
                on_change=lambda: on_change(state), replica_backends=[replica_backend])
    return state


class Stepping(Reference):
    """The reference, saying when it first stepped."""

    def __init__(self):
        import threading

        super().__init__()
        self.stepped = threading.Event()

    def step(self, r):
        self.stepped.set()
        return super().step(r)


def test_with_two_jobs_the_distributed_part_runs_beside_the_battery(tmp_path):
    """The first battery result waits (up to a minute, which only a failing run spends) for the distributed part
    to have stepped: run after the battery, it would not have."""
    backend, waited = Stepping(), []

    def on_change(state):
        if state.results and not waited:
            waited.append(backend.stepped.wait(60))

    state = _isolated_run(tmp_path, backend, on_change)
    assert waited == [True]
    assert len(state.results) == 4 and all(c.status == "ran" for c in state.results)
    assert len(state.replica_cells) == len(rb.planned_cells([backend], (2,), ("float32",)))
    assert backend.closed == 1 and state.phase is run.Phase.DONE


def test_ctrl_c_during_the_battery_stops_the_distributed_part_beside_it_and_closes_its_backends(tmp_path):
    import threading

    backend = Stepping()

    def interrupt(state):
        if state.results:  # a battery result: Ctrl-C reaches the main thread
            backend.stepped.wait(60)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _isolated_run(tmp_path, backend, interrupt)
    assert backend.stepped.is_set() and backend.closed == 1
    assert not [t for t in threading.enumerate() if t.name == "bnconf-distributed"]


def test_replica_failures_rule():
    ok = ReplicaRow("y", "conforms")
    cells = [ReplicaCell("a", 2, "equal", [4, 4], "float32", rows=[ok]),
             ReplicaCell("b", 2, "equal", [4, 4], "float32", status="unsupported", reason="GPU-only"),
             ReplicaCell("c", 2, "equal", [4, 4], "float32", rows=[ReplicaRow("dx", "non-conformant", mistake="m")]),
             ReplicaCell("d", 3, "unequal", [6, 2, 7], "float32", status="timed out", reason="hung"),
             ReplicaCell("e", 2, "equal", [4, 4], "float32", rows=[ReplicaRow("y", "known discrepancy")])]
    assert run.replica_failures(cells) == ["c world size 2 equal float32 dx: non-conformant (m)",
                                           "d world size 3 unequal float32: timed out: hung"]


def test_discovery_reports_a_missing_module_as_unavailable():
    found, missing = discover_replicas({"numpy": ("bnconf.adapters.example_replicas:BACKENDS", "test"),
                                        "nothing": ("bnconf.adapters.no_such_replicas:BACKENDS", "x"),
                                        "absent": ("fakeframework_xyz_not_installed:BACKENDS", "fake")})
    assert [b.name for b in found] == ["example.numpy.sync"]
    assert [(u.name, u.reason) for u in missing] == [
        ("nothing", "bnconf.adapters.no_such_replicas is not part of this bnconf installation"),
        ("absent", "fakeframework_xyz_not_installed is not installed (pip install 'bnconf[fake]')")]


def test_a_saved_failing_example_replays(tmp_path, capsys):
    (c,) = [rb.run_replica_cell(MUTANT["mutant.sync.backward_not_count_weighted"].backend, 2, Split.UNEQUAL,
                                "float32", 1, 0, cases_dir=tmp_path)]
    folder = c.replay.split()[-1]
    # the mutant's target is not a built-in: replay imports only what it is told to
    assert replay_main([folder]) == 2 and "--backend" in capsys.readouterr().err
    assert replay_main([folder, "--backend", "bnconf.adapters.example_replicas:BACKENDS"]) == 0  # the fixed version
    assert "dx" in capsys.readouterr().out


# ---------------------------------------------------------------- recorded behaviours beyond the hypotheses


class NanOnEmpty(Reference):
    """NaN everywhere when a shard is empty (as Flax's masked pmean gives)."""

    def step(self, r):
        out = super().step(r)
        if 0 in r.rows:
            nan = lambda a: np.full(np.shape(a), np.nan)  # noqa: E731
            out.y, out.dx = tuple(map(nan, out.y)), tuple(map(nan, out.dx))
            out.running_mean, out.running_var = tuple(map(nan, out.running_mean)), tuple(map(nan, out.running_var))
            out.dgamma = nan(out.dgamma)
        return out


class EmptyKeepsRunning(Reference):
    """A replica with an empty shard keeps its running statistics (as tf_keras under MirroredStrategy)."""

    def step(self, r):
        out = super().step(r)
        keep = lambda got, given: tuple(given if n == 0 else g for g, n in zip(got, r.rows))  # noqa: E731
        out.running_mean = keep(out.running_mean, r.running_mean)
        out.running_var = keep(out.running_var, r.running_var)
        return out


@pytest.mark.parametrize("backend, record_id", [(NanOnEmpty("test.nan"), "flax-empty-shard-nan"),
                                                (EmptyKeepsRunning("test.keep"),
                                                 "tf-keras-empty-replica-skips-moving-average")])
def test_recorded_behaviours_beyond_the_hypotheses_hold_where_the_backend_does_that(backend, record_id):
    from bnconf.conformance.known.replicas import ENTRIES

    record = replace(next(r for r in ENTRIES if r.id == record_id), backends=backend.name)
    cells = _by(rb.run_replicas([backend], 2, 0, world_sizes=(3,)))
    assert run.replica_failures(cells.values()) != []  # without the record: NON-CONFORMANT
    empty = rb.run_replica_cell(backend, 3, Split.EMPTY, "float32", 2, 0, records=(record,))
    assert empty.conforms and empty.discrepancies == {record_id: [2, 2]}
    assert {r.quantity for r in empty.rows if r.verdict == "known discrepancy"} == set(record.quantities)
    # the reference does not do it: the record's claim fails there, so the row stays NON-CONFORMANT
    honest = rb.run_replica_cell(Reference(), 3, Split.EMPTY, "float32", 1, 0,
                                 records=(replace(record, backends="test.reference"),))
    assert honest.conforms and honest.discrepancies == {record_id: [1, 0]}  # covered, not needed: stale


def test_every_built_in_record_names_a_behaviour_the_spec_models():
    from bnconf.conformance.known.replicas import BEHAVIOURS, ENTRIES
    from bnconf.spec.replica_diagnosis import REPLICA_HYPOTHESES, SINGLE_DEVICE

    names = {h.name for h in (*REPLICA_HYPOTHESES, *SINGLE_DEVICE)} | set(BEHAVIOURS)
    assert ENTRIES and all(r.hypothesis in names for r in ENTRIES)
    assert all(set(r.splits) <= {s.value for s in Split} and r.source.startswith("https://") for r in ENTRIES)
    assert len({r.id for r in ENTRIES}) == len(ENTRIES)


def test_a_gpu_only_backend_without_a_gpu_is_unsupported_with_the_reason():
    class GpuOnly(Reference):
        devices = ("cuda",)

        def unavailable(self, device):
            return "needs a CUDA device"

    cells = rb.run_replicas([GpuOnly()], 1, 0, world_sizes=(2,))
    assert {c.status for c in cells} == {"unsupported"}
    assert all(c.reason == "GPU-only: needs a CUDA device" and c.device == "cuda" for c in cells)


# ---------------------------------------------------------------- the built-in records hold on the frameworks


def _framework_cells(target: str, name: str, world_size: int, splits, module: str, dtype: str):
    pytest.importorskip(module)
    backend = next(b for b in load_replicas(target) if b.name == name)
    why = backend.unavailable("cpu")
    if why:
        pytest.skip(why)
    try:
        return [rb.run_replica_cell(backend, world_size, s, dtype, 1, 0) for s in splits]
    finally:
        rb.close_backends([backend])


TF_KERAS = "tf_keras.layers.BatchNormalization[synchronized, MirroredStrategy]"


@pytest.mark.slow
@pytest.mark.parametrize("target, name, world_size, splits, module, dtype, record_id", [
    ("bnconf.adapters.jax_replicas:BACKENDS", "flax.linen.BatchNorm(axis_name)", 2, (Split.UNEQUAL, Split.EMPTY),
     "flax", "float32", "flax-masked-pmean-weighs-replicas-equally"),
    ("bnconf.adapters.keras_replicas:BACKENDS", TF_KERAS, 3, (Split.EMPTY,), "tf_keras", "float32",
     "tf-keras-empty-replica-skips-moving-average"),
    ("bnconf.adapters.keras_replicas:BACKENDS", TF_KERAS, 2, (Split.EQUAL,), "tf_keras", "float64",
     "tf-keras-float64-float32-decay"),
    ("bnconf.adapters.torch_replicas:BACKENDS", "naive SyncBN", 1, (Split.EQUAL,), "torch", "float32",
     "naive-syncbn-world-size-1-is-plain-batchnorm"),
    ("bnconf.adapters.jax_replicas:BACKENDS", "equinox.nn.BatchNorm(axis_name)", 2, (Split.EQUAL, Split.LARGE_MEAN),
     "equinox", "float64", "equinox-first-step-from-hidden-state"),
])
def test_the_built_in_records_hold_on_the_installed_frameworks(target, name, world_size, splits, module, dtype,
                                                                record_id):
    cells = _framework_cells(target, name, world_size, splits, module, dtype)
    assert all(c.status == "ran" and c.conforms for c in cells), [(c.status, c.reason, c.rows) for c in cells]
    assert any(c.discrepancies.get(record_id, [0, 0])[1] for c in cells)
    assert any(r.verdict == "known discrepancy" for c in cells for r in c.rows)


def test_misshapen_running_statistics_are_an_error_not_a_refusal():
    class Misshapen(Reference):
        def step(self, r):
            out = super().step(r)
            out.running_mean = tuple(np.append(m, 0.0) for m in out.running_mean)
            return out

    cells = _by(rb.run_replicas([Misshapen()], 1, 0, world_sizes=(2,), dtypes=("float32",)))
    for split in ("equal", "unequal", "empty shard"):  # the empty one may be refused: this is no refusal
        assert cells[(2, split)].status == "error" and "cannot judge" in cells[(2, split)].reason
