"""`bnconf diff OLD.json NEW.json`: what changed between two reports, matched by identity; exit 1 when NEW
has a regression, 0 otherwise, 2 (one line) for a file that cannot be compared."""

import copy
import importlib.util
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from bnconf.reports.cli import main
from bnconf.reports.render import FORMAT, json_document

_SPEC = importlib.util.spec_from_file_location("synthetic_reports", Path(__file__).parent / "fixtures" / "reports.py")
reports = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reports)
small_report = reports.small_report

CPU_REPORT = Path(__file__).resolve().parents[1] / "reports" / "cpu.json"


@pytest.fixture(scope="module")
def base() -> dict:
    return json.loads(json_document(small_report()))


def _write(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def _diff(tmp_path, old: dict, new: dict, *options) -> tuple[int, str]:
    """(exit status, stdout) of `bnconf diff` on the two documents, written to files."""
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["diff", _write(tmp_path / "old.json", old), _write(tmp_path / "new.json", new), *options])
    return code, out.getvalue()


def _changes(tmp_path, old: dict, new: dict) -> tuple[int, list[dict]]:
    code, out = _diff(tmp_path, old, new, "--json")
    doc = json.loads(out)
    assert doc["format"] == "bnconf-diff/1" and doc["regression"] == (code == 1)
    return code, doc["changes"]


def _row(doc: dict, backend: str, dtype: str, mode: str, quantity: str) -> dict:
    cell = next(c for c in doc["cells"] if (c["backend"], c["dtype"], c["mode"]) == (backend, dtype, mode))
    return next(r for r in cell["rows"] if r["quantity"] == quantity)


def test_the_same_report_has_no_change(tmp_path, base):
    code, out = _diff(tmp_path, base, base)
    assert code == 0
    assert out.strip().splitlines() == [f"bnconf diff {tmp_path / 'old.json'} -> {tmp_path / 'new.json'}: no regression; "
                                        "0 fixed, 0 record change(s), 0 version change(s), 0 other change(s)"]


def test_a_row_newly_non_conformant_is_a_regression_and_listed(tmp_path, base):
    new = copy.deepcopy(base)
    row = _row(new, "example.numpy", "float32", "train_forward", "y")
    row.update(verdict="NON-CONFORMANT", failure="convention difference", max_ratio=1.5e3, diagnosis="eps squared")
    code, out = _diff(tmp_path, base, new)
    assert code == 1
    lines = out.splitlines()
    assert "REGRESSION: 1 newly failing" in lines[0]
    assert "rows newly NON-CONFORMANT (1)" in lines
    assert any(line.startswith("  example.numpy cpu float32 train_forward y: conforms -> NON-CONFORMANT "
                               "(convention difference)") and "error/bound 1.5e+03; eps squared" in line for line in lines)


def test_a_fixed_row_is_listed_and_exits_0(tmp_path, base):
    new = copy.deepcopy(base)
    _row(new, "wrong:eps-outside", "float32", "train_forward", "y").update(verdict="conforms", failure="")
    code, changes = _changes(tmp_path, base, new)
    assert code == 0
    assert [(c["section"], c["where"], c["new"]) for c in changes] == [
        ("rows newly conformant", "wrong:eps-outside cpu float32 train_forward y", "conforms")]


def test_a_version_change_is_listed_not_a_regression(tmp_path, base):
    new = copy.deepcopy(base)
    new["environment"].update(numpy="3", torch="2.14.0")
    code, out = _diff(tmp_path, base, new)
    assert code == 0
    assert "framework versions (2)" in out and "  numpy: 2 -> 3" in out and "  torch: absent -> 2.14.0" in out


def test_a_record_gone_stale_is_listed(tmp_path):
    old = small_report()
    new = small_report()
    new.discrepancies[0].needed = 0  # it still covers 8 cases: stale
    code, changes = _changes(tmp_path, json.loads(json_document(old)), json.loads(json_document(new)))
    assert code == 0
    assert [(c["kind"], c["section"], c["where"], c["old"], c["new"]) for c in changes] == [
        ("records", "records gone stale", "rec-eps-float32", "in use", "STALE")]


def test_a_cell_newly_raising_an_edge_case_newly_differing_and_a_pair_newly_unexpected_are_regressions(tmp_path, base):
    new = copy.deepcopy(base)
    cell = next(c for c in new["cells"] if c["backend"] == "example.numpy" and c["mode"] == "eval_forward")
    cell.update(status="crashed", reason="worker died (SIGSEGV)", rows=[])
    edge = next(r for r in new["edge"] if r["backend"] == "example.numpy")
    edge.update(agrees=False, outcome="returns 0 where the spec says NaN")
    new["pairs"][0]["rows"][0]["verdict"] = "UNEXPECTED difference"
    code, changes = _changes(tmp_path, base, new)
    assert code == 1
    sections = {c["section"] for c in changes if c["kind"] == "regression"}
    assert sections == {"cells newly failing", "edge cases newly DIFFERS",
                        "cross-framework pairs newly UNEXPECTED or failing"}


def test_cells_missing_from_new_are_a_regression(tmp_path, base):
    new = copy.deepcopy(base)
    new["cells"] = [c for c in new["cells"] if c["backend"] != "recorded.backend"]
    code, changes = _changes(tmp_path, base, new)
    assert code == 1
    assert [(c["section"], c["where"], c["old"]) for c in changes if c["kind"] == "regression"] == [
        ("cells missing from NEW", "recorded.backend", "3 cell(s) ran")]


def _replica(status="ran", verdict="conforms") -> dict:
    return {"backend": "numpy.replicas[sync]", "world_size": 2, "split": "equal", "rows_per_replica": [3, 3],
            "dtype": "float32", "device": "cpu", "status": status, "reason": "",
            "rows": [{"quantity": "y", "verdict": verdict, "max_ratio": 0.5}]}


def test_distributed_rows_compare_and_an_older_report_without_them_reads_as_absent(tmp_path, base):
    old = {k: v for k, v in base.items() if k not in ("replicas", "replicas_unavailable")}  # before replicas existed
    new = copy.deepcopy(base)
    new["replicas"] = [_replica(verdict="NON-CONFORMANT")]
    code, changes = _changes(tmp_path, old, new)
    assert code == 1
    assert [(c["section"], c["where"]) for c in changes if c["kind"] == "regression"] == [
        ("distributed rows newly failing", "numpy.replicas[sync] world size 2 equal float32 cpu y")]
    new_fixed = copy.deepcopy(new)
    new_fixed["replicas"] = [_replica()]
    code, changes = _changes(tmp_path, new, new_fixed)
    assert code == 0 and [c["section"] for c in changes] == ["distributed rows fixed"]


def test_different_seeds_are_compared_with_a_note(tmp_path, base):
    new = copy.deepcopy(base)
    new.update(seed=1, examples=20)
    code, out = _diff(tmp_path, base, new)
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert code == 0 and len(notes) == 2
    assert "different seeds (0 in OLD, 1 in NEW)" in notes[0] and "compared all the same" in notes[0]
    assert "different examples per cell (8 in OLD, 20 in NEW)" in notes[1]


def _one_line_error(capsys, argv, *fragments) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith("bnconf diff: error: "), captured.err
    for fragment in fragments:
        assert fragment in captured.err, captured.err
    return captured.err


def test_a_report_of_an_incompatible_format_is_one_line_with_exit_2(tmp_path, base, capsys):
    old = _write(tmp_path / "OLD.json", {**base, "format": "bnconf-report/9"})
    new = _write(tmp_path / "NEW.json", base)
    _one_line_error(capsys, ["diff", old, new],
                    f"{old} is a bnconf-report/9 report; this bnconf reads {FORMAT}: ",
                    "compare it with the bnconf version that wrote it")


@pytest.mark.parametrize("make, fragments", [
    (lambda d: d / "missing.json", ["no file", "missing.json", "check the path"]),
    (lambda d: d, ["is a folder", "give the report's JSON file in it"]),
    (lambda d: (d / "bad.json").write_text("{not json") and d / "bad.json", ["bad.json is not JSON", "line 1"]),
    (lambda d: (d / "other.json").write_text('{"cells": []}') and d / "other.json",
     ["other.json is not a bnconf report", f'"format": "{FORMAT}"']),
    (lambda d: (d / "list.json").write_text("[1, 2]") and d / "list.json", ["list.json is not a bnconf report"]),
])
def test_a_file_that_is_not_a_report_is_one_line_with_exit_2(make, fragments, tmp_path, base, capsys):
    good = _write(tmp_path / "good.json", base)
    _one_line_error(capsys, ["diff", str(make(tmp_path)), good], *fragments)
    _one_line_error(capsys, ["diff", good, str(make(tmp_path))], *fragments)


def test_the_committed_cpu_report_with_one_verdict_changed_names_exactly_that_row(tmp_path):
    old = json.loads(CPU_REPORT.read_text())
    new = copy.deepcopy(old)
    cell = next(c for c in new["cells"] if c["status"] == "ran" and len(c["rows"]) > 1)
    row = cell["rows"][1]
    assert row["verdict"] != "NON-CONFORMANT"
    was = row["verdict"]
    row.update(verdict="NON-CONFORMANT", failure="outside the bound")
    code, changes = _changes(tmp_path, old, new)
    assert code == 1
    assert changes == [{"kind": "regression", "section": "rows newly NON-CONFORMANT",
                        "where": " ".join([cell["backend"], cell["device"], cell["dtype"], cell["mode"], row["quantity"]]),
                        "old": was, "new": "NON-CONFORMANT (outside the bound)", "detail": changes[0]["detail"]}]
    code, changes = _changes(tmp_path, new, old)  # and back: fixed, exit 0
    assert code == 0 and [c["section"] for c in changes] == ["rows newly conformant"]
