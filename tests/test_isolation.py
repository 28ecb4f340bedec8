"""Isolation: a backend that segfaults, hangs or exhausts memory is reported with the input it was running,
every other result is kept, and an interrupted run leaves a valid partial report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnconf.conformance.ideal import IdealBackend
from bnconf.conformance.isolation import Limits, Unit, affinity, chains_of, run_isolated, units_of
from bnconf.conformance.repro import load_case
from bnconf.reports.cli import main
from bnconf.spec import CONVENTIONS, Mode

FIXTURE = Path(__file__).parent / "fixtures" / "misbehaving.py"
WAIT = 600  # seconds: only a failing test waits this long; none depends on the machine's speed


def report(tmp_path, *targets, limits=()):
    code = main(["report", *[a for t in targets for a in ("--backend", f"{FIXTURE}:{t}")], "--examples", "2",
                 "--pair-examples", "0", "--out", str(tmp_path), *limits])
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    return code, {(c["backend"], c["mode"]): c for c in cells}


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "3"])
def test_a_segfault_and_a_hang_are_reported_with_their_input_and_every_other_result_is_kept(tmp_path, jobs):
    """One worker at a time, or all three backends' workers at once (--jobs 3): the same outcome."""
    code, cells = report(tmp_path, "SEGFAULT", "HANG", "GOOD",
                         limits=("--time-limit", "3", "--no-edge-cases", "--jobs", jobs))
    assert code == 1
    crashed = cells["segfaults in training", "train_forward"]
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["reason"]
    assert "while running train_forward float64 cpu: shape=" in crashed["reason"]
    hung = cells["hangs in training", "train_forward"]
    assert hung["status"] == "timed out" and "no result within 3 s" in hung["reason"]
    # the input each was running is a replayable case folder
    folder, target = crashed["reason"].split("replay: bnconf replay ")[1].split(" --backend ")
    assert target == f"{FIXTURE.resolve()}:SEGFAULT"
    backend, mode, inputs, dtype, _ = load_case(folder, target)
    assert (backend.name, mode, dtype) == ("segfaults in training", Mode.TRAIN_FORWARD, "float64") and inputs.x.size
    # the misbehaving backends' other modes, run in a fresh worker, and the good backend all ran
    others = [c for key, c in cells.items() if key[1] != "train_forward" or key[0].startswith("ideal")]
    assert len(others) == 3 + 3 + 4 and all(c["status"] == "ran" for c in others)


def test_a_backend_that_exhausts_memory_is_stopped_at_the_limit(tmp_path):
    code, cells = report(tmp_path, "OOM", limits=("--memory-limit", "0.5", "--time-limit", "60", "--no-edge-cases"))
    assert code == 1
    oom = cells["exhausts memory in training", "train_forward"]
    assert oom["status"] == "out of memory" and "over the 0.5 GiB limit" in oom["reason"], oom["reason"]
    assert all(c["status"] == "ran" for key, c in cells.items() if key[1] != "train_forward")


def test_a_backend_built_in_this_process_runs_here_and_limits_are_data(tmp_path):
    ideal = IdealBackend(CONVENTIONS["torch.nn.BatchNorm2d"])  # no target to load it from in a worker
    results, _ = run_isolated([(ideal, "cpu", "float64", Mode.EVAL_FORWARD)], 2, 0, Limits(seconds=5),
                              crash_dir=tmp_path / "crashes")  # never the working folder: workers share it
    assert [r.status for r in results] == ["ran"]


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.parametrize("stop,hanging", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 2)],
                         ids=["ctrl-c", "sigterm", "ctrl-c-two-workers-at-once"])
def test_ctrl_c_leaves_a_valid_partial_report_and_no_worker_behind(tmp_path, stop, hanging):
    """The hanging backend's training forward blocks; its other cells are on disk; Ctrl-C (or a cancelled
    job's SIGTERM) ends the run. With two hanging backends in two workers at once (--jobs 2), both stop."""
    backends = [a for t in ("HANG", "HANG_TOO")[:hanging] for a in ("--backend", f"{FIXTURE}:{t}")]
    cmd = [sys.executable, "-m", "bnconf.reports.cli", "report", *backends, "--examples", "2", "--jobs", str(hanging),
           "--pair-examples", "0", "--time-limit", "600", "--out", str(tmp_path), "--no-edge-cases"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as typed at a terminal
    partial = tmp_path / "report.json"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if partial.exists() and len(json.loads(partial.read_text())["cells"]) == 3 * hanging:
            break
        time.sleep(0.2)
    doc = json.loads(partial.read_text())
    assert doc["status"] == "running" and doc["cells_planned"] == 4 * hanging
    workers = _children(proc.pid)
    assert len(workers) == hanging, "the hanging workers should be running"
    time.sleep(0.5)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=WAIT)  # generous: a loaded machine is slow, the run must end all the same
    assert proc.returncode == 130, err.decode()[-2000:]
    doc = json.loads(partial.read_text())
    assert doc["status"] == "interrupted" and len(doc["cells"]) == 3 * hanging
    assert all(c["status"] == "ran" for c in doc["cells"])
    assert f"PARTIAL report (interrupted: {3 * hanging} of {4 * hanging} cells)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").exists()
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_an_edge_case_that_crashes_is_its_outcome_and_the_other_edge_cases_still_run(tmp_path):
    code, _ = report(tmp_path, "NAN_SEGFAULT")
    edge = json.loads((tmp_path / "report.json").read_text())["edge"]
    crashed = [r for r in edge if r["outcome"].startswith("crashed")]
    assert code == 1 and {r["case"] for r in crashed} == {"nan-in-x"}
    assert all("SIGSEGV" in r["outcome"] and "edge case nan-in-x" in r["outcome"] for r in crashed)
    cases = {r["case"] for r in edge}
    assert {"inf-in-x", "gamma-zero", "constant-channel"} <= cases  # the ones after it ran in a fresh worker


def test_a_pair_that_crashes_is_that_pairs_result_and_the_table_goes_on():
    from bnconf.adapters.registry import load
    from bnconf.conformance.isolation import run_matrix_isolated

    segfault, keras = load(f"{FIXTURE}:SEGFAULT") + load(f"{FIXTURE}:KERAS_IDEAL")
    pairs = {p.mode: p for p in run_matrix_isolated([segfault, keras], 2, 0, Limits(seconds=30))}
    assert pairs["train_forward"].status == "error" and "SIGSEGV" in pairs["train_forward"].reason
    assert pairs["eval_forward"].status == "ran" and pairs["train_backward"].status == "ran"


def test_a_worker_that_exits_early_without_error_is_a_crash_not_a_lost_cell(tmp_path):
    code, cells = report(tmp_path, "EXITS_QUIETLY", limits=("--no-edge-cases",))
    quiet = cells["exits quietly in training", "train_forward"]
    assert code == 1 and quiet["status"] == "crashed" and "exited with code 0 unfinished" in quiet["reason"]
    assert len(cells) == 4


def test_validate_is_not_conformant_when_a_convention_probe_crashes(tmp_path):
    code = main(["validate", f"{FIXTURE}:PROBE_SEGFAULT", "--examples", "2", "--out", str(tmp_path)])
    inferred = json.loads((tmp_path / "validate.json").read_text())["inferred"]
    assert code == 1 and [r["verdict"] for r in inferred] == ["CRASHED"]
    assert "convention probe" in inferred[0]["evidence"] and "SIGSEGV" in inferred[0]["evidence"]


def test_a_killed_run_takes_its_worker_with_it(tmp_path):
    cmd = [sys.executable, "-m", "bnconf.reports.cli", "report", "--backend", f"{FIXTURE}:HANG", "--examples", "1",
           "--pair-examples", "0", "--no-edge-cases", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.monotonic() + WAIT, []
    while time.monotonic() < deadline and not workers:
        time.sleep(0.2)
        workers = _children(proc.pid)
    assert workers
    proc.kill()  # SIGKILL: no cleanup runs in the parent
    proc.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_units_are_one_per_backend_here_and_one_per_backend_and_device_on_a_cluster():
    """Locally a device the machine lacks costs no worker of its own; on a cluster a GPU unit needs a GPU node.
    Neither split depends on --jobs."""
    a, b = object(), object()
    cells = [(a, "cpu", "float32", Mode.TRAIN_FORWARD), (a, "cuda", "float32", Mode.TRAIN_FORWARD),
             (b, "cpu", "float32", Mode.TRAIN_FORWARD), (a, "cpu", "float64", Mode.EVAL_FORWARD)]
    local = units_of(cells)
    assert [(u.backend, u.devices, u.indices, u.first) for u in local] == [(a, ("cpu", "cuda"), (0, 1, 3), True),
                                                                           (b, ("cpu",), (2,), True)]
    cluster = units_of(cells, per_device=True)
    assert [(u.backend, u.device, u.indices, u.first) for u in cluster] == [
        (a, "cpu", (0, 3), True), (a, "cuda", (1,), False), (b, "cpu", (2,), True)]


def test_a_worker_is_kept_for_the_next_unit_of_its_target_but_never_after_a_failure(tmp_path, monkeypatch):
    """A framework is imported about once per job, not once per backend: a finished worker takes the next unit
    of the same target; one that crashed is not reused, and the next unit's results are unaffected."""
    log = tmp_path / "pids.txt"
    monkeypatch.setenv("BNCONF_TEST_PID_LOG", str(log))
    code, cells = report(tmp_path, "ONE_TARGET", limits=("--no-edge-cases", "--jobs", "1"))
    assert code == 1
    pids: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        name, pid = line.rsplit(" ", 1)
        pids.setdefault(name, set()).add(pid)
    first, second, third = (pids[n] for n in ("first of a target", "second of a target, segfaults", "third of a target"))
    assert len(first) == 1 and first <= second  # kept: the second backend's unit ran in the first's worker
    assert len(third) == 1 and not third & first  # which crashed there: never used again
    assert cells["second of a target, segfaults", "train_forward"]["status"] == "crashed"
    assert all(c["status"] == "ran" for key, c in cells.items() if key != ("second of a target, segfaults", "train_forward"))


def test_the_cross_framework_pairs_take_the_worker_the_battery_kept(tmp_path, monkeypatch):
    """The pairs of two backends of one target run in the worker their battery ran in (their framework is not
    imported again); the table is the one fresh workers give."""
    log = tmp_path / "pids.txt"
    monkeypatch.setenv("BNCONF_TEST_PID_LOG", str(log))
    pairs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs-{jobs}"
        code = main(["report", "--backend", f"{FIXTURE}:PAIRED_TARGET", "--examples", "2", "--pair-examples", "2",
                     "--no-edge-cases", "--jobs", jobs, "--out", str(out)])
        assert code == 0
        pairs[jobs] = json.loads((out / "report.json").read_text())["pairs"]
        if jobs == "1":
            assert len({line.rsplit(" ", 1)[1] for line in log.read_text().splitlines()}) == 1
    assert pairs["1"] == pairs["2"] and {p["status"] for p in pairs["1"]} == {"ran"}


def test_the_units_one_child_process_serves_are_one_chain_so_that_the_child_starts_once():
    """Backends served by one child process (same target and environment: a Keras backend and its mixed-precision
    variants) run one after another on one worker; every other unit is a chain of its own, in the units' order."""
    class Child:
        def __init__(self, env):
            self.target, self.env = "pkg.keras_like:LAYERS", env

    class Backend:
        def __init__(self, name, env=None):
            self.name = name
            if env is not None:
                self._child = Child(env)

    backends = [Backend("a", {"KERAS_BACKEND": "tensorflow"}), Backend("b"), Backend("c", {"KERAS_BACKEND": "jax"}),
                Backend("d", {"KERAS_BACKEND": "tensorflow"}), Backend("e"), Backend("f", {"KERAS_BACKEND": "jax"})]
    units = [Unit(b, ("cpu",), (i,), True) for i, b in enumerate(backends)]
    assert [[u.backend.name for u in chain] for chain in chains_of(units)] == [["a", "d"], ["b"], ["c", "f"], ["e"]]
    assert affinity(backends[0]) == affinity(backends[3]) != affinity(backends[2]) and affinity(backends[1]) is None
