"""A failing case saved as a standalone folder replays to the same verdicts, by function and by script; a
received folder runs no code of its sender's without consent; hostile names, corrupt files and misbehaving
backends give one-line outcomes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bnconf.adapters.registry import TargetError, load
from bnconf.conformance import repro
from bnconf.conformance.repro import CaseError, load_case, print_replay, read_case, replay, save_case
from bnconf.reports.cli import main
from bnconf.spec import Inputs, InputError, Mode, RunningStats

FIXTURE = Path(__file__).parents[1] / "fixtures" / "replay_backends.py"
LIMIT = 120  # seconds: generous, so that a loaded machine never turns a result into a time-out


def target(name: str) -> str:
    return f"{FIXTURE}:{name}"


def small_inputs() -> Inputs:
    x = np.random.default_rng(0).normal(1.0, 0.05, size=(8, 2))
    return Inputs(x=x, axis=1, eps=1e-3, running=RunningStats(np.zeros(2), np.ones(2), 2), momentum=0.1)


def saved(root: Path, backend_name: str = "GOOD", backend=None) -> Path:
    if backend is None:
        (backend,) = load(target(backend_name))
    return save_case(root, backend, Mode.TRAIN_FORWARD, small_inputs(), "float64", "cpu")


def edit_case(folder: Path, **changes) -> None:
    case = json.loads((folder / "case.json").read_text())
    case.update(changes)
    (folder / "case.json").write_text(json.dumps(case))


def test_a_saved_failure_replays_and_still_fails(tmp_path, capsys):
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from bnconf.conformance.mutants import MUTANTS\nBACKEND = MUTANTS['eps outside the square root'].backend\n")
    (backend,) = load(f"{wrong}:BACKEND")
    inputs = small_inputs()
    folder = save_case(tmp_path / "repro", backend, Mode.TRAIN_FORWARD, inputs, "float32", "cpu")

    with pytest.raises(CaseError, match="without your consent"):  # the folder's own target: never unasked
        load_case(folder)
    loaded_backend, mode, loaded, dtype, device = load_case(folder, f"{wrong}:BACKEND")
    assert load_case(folder, trust_folder_target=True)[0].name == backend.name
    assert (loaded_backend.name, mode, dtype, device) == (backend.name, Mode.TRAIN_FORWARD, "float32", "cpu")
    assert np.array_equal(loaded.x, inputs.x) and loaded.running.count == 2 and loaded.momentum == 0.1

    assert replay(folder, f"{wrong}:BACKEND", LIMIT) == 1
    out = capsys.readouterr().out
    assert "still fails: y" in out
    # observed against expected at the worst elements of the failing quantity, worst first
    table = re.search(r"^    index +observed +expected +bound +error/bound\n((?:    \(.*\n)+)", out, re.M)
    assert table, out
    ratios = [float(line.split()[-1]) for line in table.group(1).splitlines()]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1, out
    script = subprocess.run([sys.executable, str(folder / "repro.py"), f"{wrong}:BACKEND"], capture_output=True,
                            text=True, stdin=subprocess.DEVNULL)
    assert script.returncode == 1 and "eps outside the square root" in script.stdout, script.stderr


def test_a_case_replays_on_the_backend_the_user_names(tmp_path, capsys):
    folder = saved(tmp_path, "RAISES")
    assert replay(folder, target("GOOD"), LIMIT) == 0  # the user's fixed backend, under another name
    out = capsys.readouterr().out
    assert "replaying the case of 'raises in training' on backend 'conforms'" in out and "conforms now" in out
    with pytest.raises(CaseError, match="none is named 'raises in training'"):  # several backends there, none of that name
        replay(folder, target("HOSTILE"), LIMIT)
    with pytest.raises(TargetError, match="no attribute 'NOPE'"):  # bad input to bnconf: exit status 2 from the CLI
        replay(folder, target("NOPE"), LIMIT)
    edit_case(folder, dtype="float32")
    with pytest.raises(CaseError, match="does not run train_forward float32 on cpu"):
        replay(folder, target("GOOD"), LIMIT)


def test_hostile_backend_names_save_into_bounded_safe_folders_and_replay(tmp_path, capsys):
    backends = load(target("HOSTILE"))
    folders = [saved(tmp_path, backend=b) for b in backends]
    assert len(set(folders)) == len(backends)
    for b, folder in zip(backends, folders):
        assert folder.parent == tmp_path and len(folder.name.encode()) < 100, folder.name
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", folder.name), folder.name
        assert read_case(folder).backend == b.name  # the name itself is kept, exactly, in case.json

    for folder in folders[:1] + folders[3:4]:  # the 230-character name, and newlines with an escape sequence
        assert replay(folder, target("HOSTILE"), LIMIT) == 0
    out = capsys.readouterr().out
    assert out.count("conforms now") == 2 and "\x1b" not in out and "line one\\nline two" in out


def evil_case(tmp_path: Path) -> tuple[Path, Path, str]:
    """A received folder whose case.json names a target that writes a marker file when imported."""
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                    f"import runpy\nBACKEND = runpy.run_path({str(FIXTURE)!r})['GOOD']\n")
    folder = saved(tmp_path / "received")
    edit_case(folder, target=f"{evil}:BACKEND")
    return folder, marker, f"{evil}:BACKEND"


def test_a_received_folder_target_is_not_imported_without_consent(tmp_path, capsys, monkeypatch):
    folder, marker, evil = evil_case(tmp_path)

    with pytest.raises(CaseError) as refused:
        replay(folder, None, LIMIT)
    message = str(refused.value)
    assert "\n" not in message and evil in message and f"--backend {evil}" in message
    assert print_replay(folder) == 2  # the form a folder's repro.py uses: one line on stderr
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["replay", str(folder)]) == 2  # the command line, however --backend is wired
    script = subprocess.run([sys.executable, str(folder / "repro.py")], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert script.returncode == 2 and "--backend" in script.stderr and "Traceback" not in script.stderr
    monkeypatch.setattr(repro, "_stdin_is_tty", lambda: True)  # a terminal: asked, and the answer is no
    monkeypatch.setattr("builtins.input", lambda question: "")
    with pytest.raises(CaseError):
        replay(folder, None, LIMIT)
    assert replay(folder, target("GOOD"), LIMIT) == 0  # the backend the user names runs; the folder's does not
    assert not marker.exists()


def test_the_folder_target_runs_when_the_user_trusts_it(tmp_path, capsys, monkeypatch):
    folder, marker, _ = evil_case(tmp_path)
    assert replay(folder, None, LIMIT, trust_folder_target=True) == 0 and marker.exists()
    marker.unlink()
    monkeypatch.setattr(repro, "_stdin_is_tty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda question: "y")
    assert replay(folder, None, LIMIT) == 0 and marker.exists()
    edit_case(folder, backend="old.name")  # the folder's own target must still hold the saved backend
    with pytest.raises(CaseError, match="no longer provides a backend named 'old.name'"):
        replay(folder, None, LIMIT, trust_folder_target=True)


def test_a_backend_that_raises_is_the_replays_finding(tmp_path, capsys):
    folder = saved(tmp_path, "RAISES")
    assert replay(folder, target("RAISES"), LIMIT) == 1
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "raised" in ln]
    assert "the backend raised ValueError: no kernel for this shape (a deliberate failure)" in line


def test_a_backend_that_hangs_is_stopped_at_the_time_limit(tmp_path, capsys):
    folder = saved(tmp_path, "HANGS")
    started = time.monotonic()
    assert replay(folder, target("HANGS"), 2) == 1
    assert "timed out: no result within 2 s" in capsys.readouterr().out
    assert time.monotonic() - started < 60  # stopped, not waited on (the bound is loose: machines are slow)
    with pytest.raises(InputError, match="time_limit"):
        replay(folder, target("HANGS"), 0)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker through Linux /proc")
def test_ctrl_c_during_replay_ends_with_one_line_and_exit_130(tmp_path):
    folder = saved(tmp_path, "HANGS")
    proc = subprocess.Popen([sys.executable, str(folder / "repro.py"), target("HANGS"), "--time-limit", "600"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as typed at a terminal
    try:
        worker, deadline = None, time.monotonic() + 600  # only a failing test waits this long
        while worker is None and time.monotonic() < deadline and proc.poll() is None:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            worker = int(children[0]) if children else time.sleep(0.1)
        assert worker is not None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "bnconf replay: interrupted; the case was not finished", err
    assert not Path(f"/proc/{worker}").exists()  # the worker was stopped and reaped


def test_ctrl_c_while_the_worker_starts_stops_it_too(tmp_path, monkeypatch):
    """The Ctrl-C arrives inside Popen (the worker forked, Popen not returned yet): the worker is stopped and
    reaped all the same. Before, the KeyboardInterrupt left Popen with the worker running and unnamed."""
    folder, popen, started = saved(tmp_path, "HANGS"), subprocess.Popen, []

    def interrupted_while_starting(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGINT)  # as the user's Ctrl-C, before Popen returns
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", interrupted_while_starting)
    # as at a terminal: pytest may run as a script's background job, with SIGINT ignored (replay keeps that)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert replay(folder, target("HANGS"), LIMIT) == 130
        assert started and started[0].returncode == -signal.SIGKILL  # stopped and reaped, not left running
    finally:
        signal.signal(signal.SIGINT, previous)
        for worker in started:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def write_npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def npy_header(shape, dtype="<f8") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


CORRUPT_FIELDS = [
    ("mode", "sideways"), ("axis", "1"), ("axis", True), ("eps", "1e-3"), ("momentum", [0.1]),
    ("dtype", "float128"), ("dtype", None), ("device", "cpu\n\x1b[2J"), ("target", 5), ("target", "a.py:X\nrm -rf"),
    ("running_count", -1), ("running_count", 2.5), ("backend", 7), ("backend", ""), ("versions", [1]), ("format", "other/9"),
    ("records", "a.py:R"), ("records", [5]), ("records", ["a.py:R\nrm -rf"]), ("records", ["no-colon"]),
]


@pytest.mark.parametrize(("name", "value"), CORRUPT_FIELDS, ids=[f"{n}={v!r}" for n, v in CORRUPT_FIELDS])
def test_a_corrupt_case_json_field_is_a_one_line_case_error_naming_it(tmp_path, name, value):
    folder = saved(tmp_path)
    edit_case(folder, **{name: value})
    with pytest.raises(CaseError) as e:
        read_case(folder)
    assert f"{name!r}" in str(e.value) and "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_a_corrupt_case_folder_is_a_case_error_and_nothing_is_unpickled(tmp_path):
    def broken(label: str, change) -> Path:
        folder = saved(tmp_path / label)
        change(folder)
        return folder

    case_json = lambda text: lambda folder: (folder / "case.json").write_text(text)  # noqa: E731
    npz = lambda members: lambda folder: write_npz(folder / "inputs.npz", members)  # noqa: E731
    x = np.zeros((8, 2))
    pickled = lambda folder: np.savez(folder / "inputs.npz", x=np.array([x, None], dtype=object))  # noqa: E731
    integers = lambda folder: np.savez(folder / "inputs.npz", x=np.zeros((8, 2), dtype=np.int64))  # noqa: E731
    cases = {
        "not json": (case_json("{not json"), "case.json"),
        "a list": (case_json("[]"), "JSON object"),
        "no mode": (lambda f: (f / "case.json").write_text(json.dumps(
            {k: v for k, v in json.loads((f / "case.json").read_text()).items() if k != "mode"})), "'mode'"),
        "pickled object array": (pickled, "'x'"),
        "integer array": (integers, "'x'"),
        "forged shape": (npz({"x.npy": npy_header((10**12,))}), "GiB"),
        "unknown member": (npz({"x.npy": b"", "payload.pkl": b"cos\nsystem\n"}), "payload.pkl"),
        "no x": (lambda f: np.savez(f / "inputs.npz", gamma=np.ones(2)), "'x'"),
        "not a zip": (lambda f: (f / "inputs.npz").write_bytes(b"junk"), "inputs.npz"),
        "one running stat": (lambda f: np.savez(f / "inputs.npz", x=x, running_mean=np.zeros(2)), "running_var"),
    }
    for label, (change, named) in cases.items():
        folder = broken(label.replace(" ", "_"), change)
        with pytest.raises(CaseError) as e:
            read_case(folder)
        assert named in str(e.value) and "\n" not in str(e.value), (label, str(e.value))
    old = saved(tmp_path / "old")  # saved before case.json had a format field: still read
    (old / "case.json").write_text(json.dumps({k: v for k, v in json.loads((old / "case.json").read_text()).items()
                                               if k != "format"}))
    assert read_case(old).dtype == "float64"
    with pytest.raises(CaseError, match="no case.json"):
        replay(tmp_path, target("GOOD"), LIMIT)


def test_worst_elements_apply_a_record_as_the_judge_does_its_unchecked_channels_last():
    from bnconf.conformance.engine import assess
    from bnconf.conformance.ideal import IdealBackend
    from bnconf.conformance.records import KnownDiscrepancy
    from bnconf.spec import convention

    class Off(IdealBackend):  # y off by 1 in channel 0 (the record claims nothing there), by 1e-6 in channel 1
        def run(self, mode, r):
            out = super().run(mode, r)
            out.y = out.y + np.array([1.0, 1e-6])
            return out

    backend = Off(convention("torch.nn.functional.batch_norm"))
    record = KnownDiscrepancy(id="off", backends=backend.name, quantities=("y",), explanation="e", evidence="e",
                              unchecked=lambda i: np.array([True, False]))
    a = assess(backend, Mode.TRAIN_FORWARD, small_inputs(), "float64", "cpu", registry=(record,))
    assert a.discrepancy is record and "y" in a.problems()  # channel 1 still fails the record's claim
    rows = repro.worst_elements(backend, Mode.TRAIN_FORWARD, a, "float64", "cpu", "y", count=16)
    checked = [r for r in rows if r[0][1] == 1]
    assert rows[:len(checked)] == checked and all(r[4] > 1 for r in checked), rows  # the claimed channel first
    assert all(np.isnan(r[4]) for r in rows if r[0][1] == 0), rows  # no claim there: no bound, ranked last
