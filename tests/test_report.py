"""`bnconf report`: files written, exit status, determinism, and a clear error for an unwritable folder."""

import json
from pathlib import Path

import pytest

from bnconf.reports.cli import main

EXAMPLE = "bnconf.adapters.example_numpy:BACKEND"


def _strip_timings(doc):
    doc.pop("seconds_per_backend")
    for cell in doc["cells"]:
        cell.pop("seconds")
    return doc


def test_a_conforming_backend_gives_exit_0_and_all_four_files(tmp_path, capsys):
    assert main(["report", "--backend", EXAMPLE, "--examples", "5", "--out", str(tmp_path), "--name", "t"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"t.md", "t.html", "t.json", "t-heatmap.png", "t-conditioning.png", "t-length.png"}
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["format"] == "bnconf-report/1" and doc["conforms"] is True
    assert {c["mode"] for c in doc["cells"]} == {"train_forward", "eval_forward", "train_backward"}
    edge = {r["case"] for r in doc["edge"]}
    assert {"nan-in-x", "momentum-outside-unit-interval", "empty-batch"} <= edge and all(r["agrees"] for r in doc["edge"])
    assert "## Edge-case behaviour" in (tmp_path / "t.md").read_text()
    assert "conforms" in capsys.readouterr().out


@pytest.mark.slow
def test_the_same_seed_gives_the_same_report_but_for_timings(tmp_path):
    """Run isolated in one worker at a time, in two workers at once (the backends and the pair batches
    concurrently), and in this process, battery and cross-framework table: identical JSON but for timings;
    another seed gives another report."""
    keras = f"{Path(__file__).parent / 'fixtures' / 'misbehaving.py'}:KERAS_IDEAL"
    runs = {"a": ["--seed", "3", "--jobs", "1"], "b": ["--seed", "3", "--no-isolation"], "c": ["--seed", "4"],
            "d": ["--seed", "3", "--jobs", "2"]}
    for name, extra in runs.items():
        main(["report", "--backend", EXAMPLE, "--backend", keras, "--examples", "3", "--pair-examples", "1",
              "--out", str(tmp_path), "--name", name, *extra])
    a, b, c, d = (_strip_timings(json.loads((tmp_path / f"{n}.json").read_text())) for n in runs)
    assert a["pairs"] and a == b
    assert a == d
    assert a["cells"] != c["cells"]


def test_a_wrong_backend_gives_exit_1_and_names_the_quantity(tmp_path):
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from bnconf.conformance.mutants import MUTANTS\nBACKEND = MUTANTS['eps outside the square root'].backend\n")
    assert main(["report", "--backend", f"{wrong}:BACKEND", "--dtype", "float32", "--examples", "30",
                 "--out", str(tmp_path), "--name", "w"]) == 1
    doc = json.loads((tmp_path / "w.json").read_text())
    bad = {(c["mode"], r["quantity"]) for c in doc["cells"] for r in c["rows"] if r["verdict"].startswith("NON")}
    assert ("train_forward", "y") in bad


def test_an_unwritable_report_folder_is_a_one_line_error_with_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["report", "--backend", EXAMPLE, "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the folder" in err and "pick another folder with --out" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "nonsense"], "expected module:attribute"),
        (["--backend", "bnconf.spec:CONVENTIONS"], "backend"),
        (["--backend", EXAMPLE, "--dtype", "float8"], "unknown dtype float8"),
        (["--backend", EXAMPLE, "--device", "gpu"], "nothing to run"),
        (["--backend", EXAMPLE, "--examples", "0"], "--examples must be between 1 and"),
    ],
)
def test_bad_input_to_report_is_one_line_with_exit_2(args, message, tmp_path, capsys):
    assert main(["report", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_replaying_a_folder_that_is_not_a_saved_case_is_exit_2(tmp_path, capsys):
    assert main(["replay", str(tmp_path)]) == 2
    assert "not a saved case" in capsys.readouterr().err


def test_a_backend_that_returns_nothing_does_not_conform(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text(
        "from bnconf.adapters.example_numpy import NumpyBatchNorm\nfrom bnconf.adapters.protocol import Outputs\n"
        "class Empty(NumpyBatchNorm):\n    name = 'empty'\n    def run(self, mode, r):\n        return Outputs()\n"
        "BACKEND = Empty()\n"
    )
    assert main(["report", "--backend", f"{empty}:BACKEND", "--examples", "3", "--out", str(tmp_path), "--name", "e"]) == 1
    doc = json.loads((tmp_path / "e.json").read_text())
    assert {r["detail"].split(":")[0] for c in doc["cells"] for r in c["rows"]} == {"not returned"}


def test_the_report_has_a_cross_framework_table_and_the_use_of_each_known_discrepancy(tmp_path):
    assert main(["report", "--no-isolation", "--backend", "bnconf.adapters.torch_batchnorm:BACKENDS", "--dtype", "bfloat16",
                 "--examples", "4", "--pair-examples", "2", "--out", str(tmp_path), "--name", "p"]) == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert {(p["source"], p["target"]) for p in doc["pairs"]} >= {("torch.nn.functional.batch_norm", "torch.nn.BatchNorm2d")}
    uses = {d["id"]: d for d in doc["discrepancies"]}
    assert uses["torch-cpu-half-parameters"]["status"] == "in use"
    assert "## Frameworks against each other after translating parameters" in (tmp_path / "p.md").read_text()


def test_an_entry_that_covers_cases_none_of_which_need_it_is_reported_stale():
    from bnconf.conformance.battery import CellResult, discrepancy_use
    from bnconf.conformance.discrepancies import KnownDiscrepancy

    entry = KnownDiscrepancy(id="e", backends="b*", quantities=("y",), explanation="", evidence="")
    cell = CellResult("b1", "c", "cpu", "float32", "train_forward", "ran", discrepancies={"e": [7, 0]})
    (use,) = discrepancy_use([cell], [entry])
    assert use.status.startswith("STALE") and "7" in use.status
    cell.discrepancies["e"][1] = 2
    assert discrepancy_use([cell], [entry])[0].status == "in use"


def test_validate_runs_the_battery_on_one_target_and_exits_by_its_verdict(tmp_path, capsys):
    assert main(["validate", EXAMPLE, "--examples", "4", "--out", str(tmp_path)]) == 0
    assert {"validate.md", "validate.html", "validate.json", "validate-heatmap.png"} <= {p.name for p in tmp_path.iterdir()}
    inferred = json.loads((tmp_path / "validate.json").read_text())["inferred"]
    assert {r["property"] for r in inferred} >= {"momentum_style", "running_var", "eps_placement"}
    assert all(r["agrees"] for r in inferred)
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from bnconf.conformance.mutants import MUTANTS\nBACKEND = MUTANTS['eps outside the square root'].backend\n")
    assert main(["validate", f"{wrong}:BACKEND", "--dtype", "float32", "--examples", "30", "--out", str(tmp_path)]) == 1
    biased = tmp_path / "biased.py"
    biased.write_text("from bnconf.conformance.mutants import MUTANTS\nBACKEND = MUTANTS['biased running variance'].backend\n")
    assert main(["validate", f"{biased}:BACKEND", "--dtype", "float32", "--examples", "30", "--out", str(tmp_path)]) == 1
    inferred = {r["property"]: r for r in json.loads((tmp_path / "validate.json").read_text())["inferred"]}
    assert inferred["running_var"]["value"] == "biased" and not inferred["running_var"]["agrees"]
    assert inferred["running_var"]["verdict"] == "DIFFERS"
    assert main(["validate", "no_such_module:BACKEND", "--out", str(tmp_path)]) == 2
    assert "cannot import" in capsys.readouterr().err
