"""The run's own promises (issue 14): a backend is judged as itself, validate fails on what it cannot vouch
for, the partial JSON keeps up with a burst of results, Ctrl-C keeps every finished result (pairs included)
and never shows a traceback, and option errors are one line with the fix."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnconf.conformance import run
from bnconf.conformance.crosscheck import UNEXPECTED, PairResult, PairRow
from bnconf.reports.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
CONTROL = FIXTURES / "run_control.py"
WAIT = 600  # seconds: only a failing test waits this long; a passing one never depends on the machine's speed


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- 1. names identify backends


def test_two_backends_with_one_name_in_a_target_are_refused(tmp_path, capsys):
    assert main(["validate", f"{CONTROL}:SAME_NAME", "--out", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert "two different backends are named 'my_bn'" in err and "unique name" in err
    assert not (tmp_path / "validate.json").exists()


def test_two_targets_with_one_backend_name_are_refused_and_one_target_twice_runs_once(tmp_path, capsys):
    assert main(["report", "--backend", f"{CONTROL}:ALSO_MY_BN", "--backend", f"{CONTROL}:SAME_NAME",
                 "--out", str(tmp_path)]) == 2
    assert "named 'my_bn'" in _one_line_error(capsys)
    ideal = f"{CONTROL}:KERAS_IDEAL"
    assert main(["report", "--backend", ideal, "--backend", ideal, "--examples", "1", "--pair-examples", "0",
                 "--no-edge-cases", "--out", str(tmp_path), "--name", "twice"]) == 0
    cells = json.loads((tmp_path / "twice.json").read_text())["cells"]
    assert len(cells) == len({(c["backend"], c["mode"]) for c in cells}) == 4


# ---------------------------------------------------------------- 4. validate vouches only for what it inferred


@pytest.mark.parametrize("verdict, fails", [("agrees", False), ("differs as recorded: tf-float32-decay", False),
                                            ("DIFFERS", True), ("probing failed", True), ("CRASHED", True),
                                            ("TIMED OUT", True)])
def test_an_unexplained_inferred_property_fails_the_run(verdict, fails):
    row = dict(backend="b", property="momentum", verdict=verdict)
    assert bool(run.inference_failures([row])) is fails


def test_each_overall_rule_can_fail_the_run():
    assert run.edge_failures([dict(backend="b", case="nan-in-x", mode="train_forward", dtype="float32",
                                   agrees=False, outcome="NaN masked", recorded=None)])
    assert not run.edge_failures([dict(backend="b", case="c", mode="m", dtype="d", agrees=False, outcome="o",
                                       recorded="edge-record")])
    unexpected = PairResult("a", "b", "train_forward", "ran", rows=[PairRow("a", "b", "train_forward", "y", UNEXPECTED)])
    assert run.pair_failures([unexpected]) and run.pair_failures([PairResult("a", "b", "m", "error", "boom")])


def test_a_probe_that_raises_fails_validate_like_a_probe_that_crashes(tmp_path):
    raised = main(["validate", f"{CONTROL}:PROBE_RAISES", "--examples", "2", "--no-edge-cases", "--out", str(tmp_path),
                   "--name", "raises"])
    crashed = main(["validate", f"{FIXTURES / 'misbehaving.py'}:PROBE_SEGFAULT", "--examples", "2", "--no-edge-cases",
                    "--out", str(tmp_path), "--name", "crashes"])
    assert raised == crashed == 1
    inferred = json.loads((tmp_path / "raises.json").read_text())["inferred"]
    assert any("a backend bug hit by a convention probe" in r["evidence"] for r in inferred)


# ---------------------------------------------------------------- 7. the partial JSON keeps up


class _Folder:
    def __init__(self):
        self.writes = []

    def write(self, name, data):
        self.writes.append(json.loads(data)["cells"])


def test_a_burst_of_results_is_on_disk_as_soon_as_the_run_waits(monkeypatch):
    from bnconf.conformance.battery import CellResult
    from bnconf.reports import publish

    clock = [0.0]
    monkeypatch.setattr(publish.time, "monotonic", lambda: clock[0])
    state, folder = run.RunState(cells_planned=48), _Folder()
    p = publish.Publisher(folder, "r", state, [], {}, 0, 1, lambda s: [])
    state.results.append(CellResult("b", "c", "cpu", "float64", "train_forward", "ran"))
    clock[0] = 1.0
    p.arrived()  # the first write
    p._took = 0.5  # a large report: a write costs half a second
    for _ in range(47):  # a burst: 47 cells within a moment, each too soon after the last write
        state.results.append(CellResult("b", "c", "cpu", "float64", "train_forward", "ran"))
        clock[0] += 0.001
        p.arrived()
    assert len(folder.writes) == 1
    p.idle()  # the next poll finds the worker busy with a slow case
    assert len(folder.writes[-1]) == 48
    p.idle()  # nothing new: no rewrite
    assert len(folder.writes) == 2


# ---------------------------------------------------------------- 8. Ctrl-C


def _start(tmp_path, *argv, env=None):
    cmd = [sys.executable, "-m", "bnconf.reports.cli", *argv, "--out", str(tmp_path)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_as_at_a_terminal,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def ctrl_c_as_at_a_terminal():
    """In the child before exec: SIGINT handled by default, as a command typed at a terminal has it (pytest
    itself may run as a script's background job, which starts with SIGINT ignored, and bnconf keeps that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_ctrl_c_during_the_pairs_keeps_the_finished_pairs_and_a_second_ctrl_c_exits_at_once(tmp_path):
    proc = _start(tmp_path, "report", "--backend", f"{CONTROL}:KERAS_IDEAL", "--backend", f"{CONTROL}:PAIR_HANG",
                  "--dtype", "float32", "--examples", "1", "--pair-examples", "1", "--no-edge-cases",
                  "--time-limit", str(WAIT), "--jobs", "1")  # one batch of pairs: they run in order
    partial = tmp_path / "report.json"
    # the train pair finished, the eval pair hangs: the partial JSON shows the finished pair while it waits
    _wait_for(lambda: (_json(partial) or {}).get("pairs"), "the first finished pair in the partial JSON")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # at once: while the first is handled, or while the report renders
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 130 and "Traceback" not in err.decode(), err.decode()[-3000:]
    doc = json.loads(partial.read_text())
    assert doc["status"] == "interrupted"
    assert [(p["mode"], p["status"]) for p in doc["pairs"]] == [("train_forward", "ran")]
    assert len(doc["cells"]) == 4 and all(c["status"] == "ran" for c in doc["cells"])  # PAIR_HANG's float32 cells


def test_ctrl_c_before_the_battery_starts_is_one_line_and_exit_130(tmp_path):
    marker = tmp_path / "importing"
    proc = _start(tmp_path, "report", "--backend", f"{CONTROL}:KERAS_IDEAL", env={"BNCONF_TEST_SLOW_IMPORT": str(marker)})
    _wait_for(marker.exists, "the backend's module to start importing")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 130 and err.decode().strip() == "bnconf report: interrupted", err.decode()[-3000:]


# ---------------------------------------------------------------- smaller: option errors


@pytest.mark.parametrize("argv, says", [
    (["--examples", "0"], "--examples must be between 1 and"),
    (["--examples", "1000000000"], "--examples must be between 1 and"),
    (["--pair-examples", "-1"], "--pair-examples must be between 0"),
    (["--time-limit", "0"], "give it in seconds"),
    (["--memory-limit", "inf"], "give it in GiB"),
])
def test_an_option_out_of_range_is_one_line_with_the_fix(tmp_path, capsys, argv, says):
    assert main(["report", "--backend", "bnconf.adapters.example_numpy:BACKEND", *argv, "--out", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert says in err and "; " in err  # the problem; how to fix it


def test_debug_shows_the_traceback_and_keeps_exit_2(tmp_path, capsys):
    assert main(["report", "--debug", "--backend", "no_such_module:X", "--out", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------- 9. concurrent runs into one folder


def test_a_second_report_into_the_same_folder_and_name_refuses_before_running(tmp_path, capsys, monkeypatch):
    from bnconf.conformance import run as run_module
    from bnconf.reports.output import ReportFolder

    with ReportFolder(tmp_path, "report") as first:  # the first run holds it
        first.write("report.json", b'{"the first run": "still writing"}')
        monkeypatch.setattr(run_module, "execute", lambda *a, **k: pytest.fail("the battery was about to run"))
        assert main(["report", "--backend", "bnconf.adapters.example_numpy:BACKEND", "--out", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert f"another bnconf run (pid {os.getpid()})" in err and "pick another --out or --name" in err
    assert json.loads((tmp_path / "report.json").read_text()) == {"the first run": "still writing"}


def test_a_signal_the_run_was_started_with_ignored_stays_ignored(monkeypatch):
    """`nohup bnconf report` ignores SIGHUP: the run must not turn it into an interrupt."""
    from bnconf.reports import cli

    before = {sig: signal.getsignal(sig) for sig in cli.STOP_SIGNALS}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        with cli._signals_interrupt() as caught:
            assert signal.SIGHUP not in caught and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is cli._interrupt and signal.SIGTERM in caught
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_bad_input_found_after_the_backends_load_leaves_the_previous_report_alone(tmp_path, capsys):
    """The folder is claimed (and the previous run of the name cleared) only once the run will start."""
    previous = {"cpu.md": "old report", "cpu-heatmap.png": "old figure", "cpu-crashes/case/case.json": "{}"}
    for name, text in previous.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert main(["report", "--backend", f"{CONTROL}:SAME_NAME", "--out", str(tmp_path), "--name", "cpu"]) == 2
    _one_line_error(capsys)
    assert all((tmp_path / name).read_text() == text for name, text in previous.items())
