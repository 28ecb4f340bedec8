"""Every finding of a run replays from the one line the report prints (issue 15, item 4): a NON-CONFORMANT row,
an ERROR cell and a convention property that DIFFERS each save their case under `<out>/<name>-cases/`, and
running that exact line (`bnconf replay <folder> --backend <target>`) exits 1 showing observed against
expected at the worst elements; isolated in workers and in one process alike. Inference probes in the dtype
the run selected and names the best hypothesis when none fits (item 5)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from bnconf.adapters.registry import load
from bnconf.conformance.inference import report_rows
from bnconf.reports.cli import main

FIXTURE = Path(__file__).parents[1] / "fixtures" / "wrong.py"
ISOLATION = pytest.mark.parametrize("isolation", [[], ["--no-isolation"]], ids=["isolated", "in-process"])
QUICK = ["--no-edge-cases", "--pair-examples", "0"]
TABLE_HEADER = re.compile(r"^\s+index\s+observed\s+expected\s+bound\s+error/bound$", re.M)


def target(name: str) -> str:
    return f"{FIXTURE}:{name}"


def replay_folder(line: str, out: Path, name: str, backend: str) -> Path:
    """The folder of a replay line, checked to be exactly `bnconf replay <folder> --backend <target>`."""
    argv = shlex.split(line)
    assert argv[:2] == ["bnconf", "replay"] and argv[3:] == ["--backend", target(backend)], line
    folder = Path(argv[2])
    assert folder.parent == out / f"{name}-cases" and (folder / "case.json").is_file(), line
    return folder


def replayed(line: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(shlex.split(line)[1:])
    return code, capsys.readouterr().out


@ISOLATION
def test_every_non_conformant_row_replays_its_worst_case(tmp_path, capsys, isolation):
    assert main(["report", "--backend", target("EPS_OUTSIDE"), "--dtype", "float32", "--examples", "8", *QUICK,
                 "--out", str(tmp_path), "--name", "w", *isolation]) == 1
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "w.json").read_text())
    bad = [r for c in doc["cells"] for r in c["rows"] if r["verdict"] == "NON-CONFORMANT"]
    assert any(r["quantity"] == "y" for r in bad)
    assert all(not r["replay"] for c in doc["cells"] for r in c["rows"] if r["verdict"] != "NON-CONFORMANT")
    markdown = (tmp_path / "w.md").read_text()
    for row in bad:
        replay_folder(row["replay"], tmp_path, "w", "EPS_OUTSIDE")
        assert row["replay"] in printed and row["replay"] in markdown
        code, out = replayed(row["replay"], capsys)
        assert code == 1 and f"still fails: {row['quantity']}" in out, out
        # exactly the case the row shows: the same worst error/bound, and its worst elements in a table
        assert f"{row['quantity']}: convention difference" in out
        assert f"max error/bound {row['max_ratio']:.3g}" in out, out
        assert TABLE_HEADER.search(out), out
        first = out[TABLE_HEADER.search(out).end():].splitlines()[1].split()
        assert first[-1] == f"{row['max_ratio']:.3g}", out


@ISOLATION
def test_an_error_cell_saves_its_first_case_and_replays_it(tmp_path, capsys, isolation):
    assert main(["report", "--backend", target("WRITES_INTO_X"), "--backend", target("RAISES_IN_BACKWARD"),
                 "--dtype", "float64", "--examples", "3", *QUICK, "--out", str(tmp_path), "--name", "e", *isolation]) == 1
    doc = json.loads((tmp_path / "e.json").read_text())
    errors = {(c["backend"], c["mode"]): c["reason"] for c in doc["cells"] if c["status"] == "error"}
    assert set(errors) == {("wrong:writes-into-x", "eval_forward"), ("wrong:raises-in-backward", "train_backward")}
    lines = {k: re.search(r"; replay: (bnconf replay .*)$", reason).group(1) for k, reason in errors.items()}

    line = lines["wrong:writes-into-x", "eval_forward"]
    replay_folder(line, tmp_path, "e", "WRITES_INTO_X")
    code, out = replayed(line, capsys)
    assert code == 1 and "the backend wrote into its input x" in out and "still fails: it writes into its inputs" in out, out
    assert re.search(r"y: conforms; .* observed \S+, expected \S+, bound \S+", out), out

    line = lines["wrong:raises-in-backward", "train_backward"]
    replay_folder(line, tmp_path, "e", "RAISES_IN_BACKWARD")
    code, out = replayed(line, capsys)
    assert code == 1 and "the backend raised ValueError: no backward kernel" in out, out


@ISOLATION
def test_a_differing_convention_property_replays_its_deciding_probe_in_the_dtype_asked_for(tmp_path, capsys, isolation):
    assert main(["validate", target("MOMENTUM_SKEWED"), "--dtype", "float32", "--examples", "2", *QUICK,
                 "--out", str(tmp_path), "--name", "v", *isolation]) == 1
    doc = json.loads((tmp_path / "v.json").read_text())
    rows = {r["property"]: r for r in doc["inferred"]}
    assert {r["dtype"] for r in rows.values()} == {"float32"}  # not float64, which the backend also declares
    momentum = rows["momentum_style"]
    assert momentum["verdict"] == "DIFFERS"
    # no hypothesis is accepted, and the best one is shown with its residual
    assert re.search(r"no hypothesis within \S+; best: new_weight \(residual 0\.001\)", momentum["evidence"]), momentum
    assert all(not r["replay"] for r in rows.values() if r["verdict"] != "DIFFERS")
    folder = replay_folder(momentum["replay"], tmp_path, "v", "MOMENTUM_SKEWED")
    assert json.loads((folder / "case.json").read_text())["dtype"] == "float32"
    assert momentum["replay"] in (tmp_path / "v.md").read_text()
    code, out = replayed(momentum["replay"], capsys)
    assert code == 1 and "running_mean: non-conformant" in out and "still fails: running_mean" in out, out
    assert TABLE_HEADER.search(out), out


def test_inference_probes_only_in_the_first_selected_dtype_the_backend_declares():
    (backend,) = load(target("MOMENTUM_SKEWED"))
    seen = []
    rows = report_rows(backend, before=lambda mode, r: seen.append(r.dtype), dtypes=["float16", "float32"])
    assert rows and set(seen) == {"float32"} and {r["dtype"] for r in rows} == {"float32"}
    seen.clear()
    report_rows(backend, before=lambda mode, r: seen.append(r.dtype), dtypes=["float32", "float64"])
    assert set(seen) == {"float64"}  # the widest selected: the most accurate probe of those asked for
    assert report_rows(backend, dtypes=["bfloat16"]) == []  # none of the selected dtypes: nothing probed


def test_the_cases_folder_belongs_to_its_run(tmp_path, capsys):
    """A file where the cases folder goes is refused before anything runs; a previous run's cases go."""
    (tmp_path / "c-cases").write_text("")
    assert main(["report", "--backend", target("EPS_OUTSIDE"), "--dtype", "float32", "--examples", "2", *QUICK,
                 "--out", str(tmp_path), "--name", "c", "--no-isolation"]) == 2
    assert "stands where the cases folder" in capsys.readouterr().err
    (tmp_path / "c-cases").unlink()
    old = tmp_path / "c-cases" / "old-case"
    old.mkdir(parents=True)
    main(["report", "--backend", "bnconf.adapters.example_numpy:BACKEND", "--dtype", "float32", "--examples", "2",
          *QUICK, "--out", str(tmp_path), "--name", "c", "--no-isolation"])
    assert not old.exists()
