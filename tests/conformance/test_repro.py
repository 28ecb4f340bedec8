"""A failing case saved as a standalone folder replays to the same verdicts, by command and by script."""

import subprocess
import sys

import numpy as np

from bnconf.adapters.registry import load
from bnconf.conformance.repro import load_case, save_case
from bnconf.reports.cli import main
from bnconf.spec import Inputs, Mode, RunningStats


def test_a_saved_failure_replays_and_still_fails(tmp_path, capsys):
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from bnconf.conformance.mutants import MUTANTS\nBACKEND = MUTANTS['eps outside the square root'].backend\n")
    (backend,) = load(f"{wrong}:BACKEND")
    x = np.random.default_rng(0).normal(1.0, 0.05, size=(8, 2))
    inputs = Inputs(x=x, axis=1, eps=1e-3, running=RunningStats(np.zeros(2), np.ones(2), 2), momentum=0.1)
    folder = save_case(tmp_path / "repro", backend, Mode.TRAIN_FORWARD, inputs, "float32", "cpu")

    loaded_backend, mode, loaded, dtype, device = load_case(folder)
    assert (loaded_backend.name, mode, dtype, device) == (backend.name, Mode.TRAIN_FORWARD, "float32", "cpu")
    assert np.array_equal(loaded.x, x) and loaded.running.count == 2 and loaded.momentum == 0.1

    assert main(["replay", str(folder)]) == 1
    assert "still fails: y" in capsys.readouterr().out
    script = subprocess.run([sys.executable, str(folder / "repro.py")], capture_output=True, text=True)
    assert script.returncode == 1 and "eps outside the square root" in script.stdout
