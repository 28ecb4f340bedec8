"""Summary first (issue 16, item 6): every format opens with one line per backend and the findings; the Markdown
stays small (the full tables are in the HTML and JSON); every row says what it saw; a JSON report reads back."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from bnconf.conformance.battery import QuantityRow
from bnconf.reports import render, summary
from bnconf.reports.load import load_report

_SPEC = importlib.util.spec_from_file_location("synthetic_reports", Path(__file__).parent / "fixtures" / "reports.py")
reports = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reports)


def _lines(report) -> dict:
    return {line.backend: line for line in summary.backend_lines(report)}


# ---------------------------------------------------------------- the summary's data


def test_one_line_per_backend_counts_cells_examples_and_rows_per_verdict():
    lines = _lines(reports.small_report())
    assert list(lines) == ["example.numpy", "recorded.backend", "wrong:eps-outside", "wrong:raises-in-backward"]
    ok = lines["example.numpy"]
    assert (ok.cells, ok.unsupported, ok.drawn, ok.judged, ok.conforms, ok.verdict) == (6, 0, 48, 42, 14, "conforms")
    known = lines["recorded.backend"]
    assert (known.known, known.ill_conditioned, known.worst_ratio) == (1, 1, 0.25)  # the known row's 40 is not "worst"
    wrong = lines["wrong:eps-outside"]
    assert (wrong.non_conformant, wrong.worst_ratio, wrong.edge, wrong.verdict) == (1, 1.9e6, [4, 0, 2], "NON-CONFORMANT")
    raising = lines["wrong:raises-in-backward"]
    assert (raising.errors, raising.verdict) == (1, "ERROR")


def test_without_coverage_a_cell_counts_its_fullest_row_and_nan_is_the_worst_ratio():
    report = reports.small_report()
    cell = report.results[0]
    cell.coverage = {}
    cell.rows[0].max_ratio = float("nan")
    assert summary.cell_examples(cell) == (8, 8)
    assert math.isnan(_lines(report)["example.numpy"].worst_ratio)


def test_the_findings_are_every_reason_the_run_fails_with_what_was_seen_and_the_replay_line():
    found = summary.findings(reports.small_report())
    assert [(f.backend, f.verdict) for f in found] == [
        ("wrong:eps-outside", "NON-CONFORMANT (convention difference)"), ("wrong:raises-in-backward", "ERROR"),
        ("wrong:eps-outside", "DIFFERS")]
    row, error, edge = found
    assert row.diagnosis.startswith("eps outside the square root (residual 3e-08") and "runner-up" in row.diagnosis
    assert (row.observed, row.expected, row.relative_error, row.judged, row.drawn) == (2.5, 0.74, 2.38, 7, 8)
    assert row.replay == reports.REPLAY
    assert error.diagnosis == "3 case(s) raised; first: ValueError: no backward kernel [shape=(2, 3)]"
    assert error.replay == "bnconf replay /tmp/r/r-cases/raises --backend wrong.py:RAISES_IN_BACKWARD"
    assert edge.where == "cpu edge case nan-in-x" and "returns 0 where the spec says NaN" in edge.diagnosis


def test_a_row_without_a_diagnosis_shows_its_detail():
    report = reports.small_report()
    row = report.results[-6].rows[2]
    row.diagnosis, row.diagnosis_note, row.detail = "", "", "the output equals 1/sqrt(var + eps)"
    (finding,) = [f for f in summary.findings(report) if f.subject == "y"]
    assert finding.diagnosis == "the output equals 1/sqrt(var + eps)"


# ---------------------------------------------------------------- every format opens with it


def test_the_terminal_opens_with_the_summary_then_the_findings_then_the_full_tables():
    text = render.terminal(reports.small_report())
    summary_at, findings_at, full_at = (text.index(s) for s in ("Summary\n", "Findings (3)", "Conformance to each"))
    assert summary_at < findings_at < full_at
    assert text.splitlines()[0] == "bnconf discrepancy report: NON-CONFORMANT quantities found"
    assert reports.REPLAY in text and "observed 2.5, expected 0.74 (relative error 2.38)" in text


def test_the_markdown_is_the_summary_the_findings_and_short_tables_and_names_the_full_ones():
    md = render.markdown(reports.small_report("r"))
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[:2] == ["## Summary", "## Findings (3)"] and headings[-1] == "## Full tables"
    assert "## Conformance to each backend's declared convention" not in md  # the per-quantity table: HTML, JSON
    assert "[r.html](r.html)" in md and "[r.json](r.json)" in md
    assert reports.REPLAY in md and "7/8 examples judged" in md
    assert "| wrong:eps-outside | 3/3 | 21/24 | 6 | 0 | 0 | 1 | 0 | 4/0/2 | 1.9e+06 |" in md


def test_a_report_of_2000_rows_has_a_markdown_summary_under_30_kb():
    report = reports.big_report()
    assert sum(len(c.rows) for c in report.results) == 2000
    md = render.markdown(report)
    assert len(md.encode()) < 30_000, len(md.encode())
    assert "## Findings (1)" in md and "2000 rows" in md


def test_the_markdown_lists_at_most_a_bounded_number_of_findings():
    report = reports.big_report()
    for c in report.results[:80]:
        c.rows[0] = reports.wrong_row()
    md = render.markdown(report)
    assert md.count("NON-CONFORMANT (convention difference)") == render.MARKDOWN_FINDINGS
    assert f"... and {80 - render.MARKDOWN_FINDINGS} more" in md and len(md.encode()) < 60_000


def test_the_html_opens_with_the_summary_and_has_every_row_in_a_filterable_table():
    page = render.html_page(reports.small_report())
    assert page.index('id="summary"') < page.index("<h2>Findings</h2>") < page.index('id="conformance"')
    assert 'id="filter-text"' in page and 'id="filter-backend"' in page
    assert page.count('data-verdict="NON-CONFORMANT"') == 1 + 1  # the summary's line, the table's row
    assert 'value="known discrepancy"' in page and "http" not in page.replace("http-equiv", "")  # nothing fetched


# ---------------------------------------------------------------- every row says what it saw


def test_every_row_shows_its_examples_ill_conditioned_rows_their_reason_and_no_ulp_figure_is_a_dash():
    rows = {(r[0], r[2], r[3], r[4]): r for r in render._cell_rows(reports.small_report().results)}
    header = render.CELL_HEADER
    ill = rows["recorded.backend", "float32", "train_forward", "running_var"]
    assert ill[header.index("examples judged / drawn")] == "5/8"
    assert ill[header.index("verdict")] == "ill-conditioned: |mean|/std = 3.1e+04 >= 1/(16 u): the float32 variance is lost"
    assert ill[header.index("ulps")] == render.NO_FIGURE
    wrong = rows["wrong:eps-outside", "float32", "train_forward", "y"]
    assert wrong[header.index("observed / expected")] == "2.5 / 0.74"
    assert wrong[header.index("relative error")] == "2.38"
    assert "eps outside the square root (residual 3e-08" in wrong[header.index("verdict")]


# ---------------------------------------------------------------- the JSON reads back


def test_the_json_reads_back_into_the_same_report_and_holds_the_summary():
    report = reports.small_report()
    text = render.json_document(report)
    doc = json.loads(text)
    assert [b["verdict"] for b in doc["summary"]["backends"]] == ["conforms", "conforms", "NON-CONFORMANT", "ERROR"]
    assert doc["summary"]["findings"][0]["replay"] == reports.REPLAY
    again = load_report(text)
    again.name = report.name
    assert render.json_document(again) == text
    assert render.markdown(again) == render.markdown(report)


def test_a_report_written_before_the_new_fields_still_loads_and_renders():
    doc = json.loads(render.json_document(reports.small_report()))
    del doc["summary"]
    for c in doc["cells"]:
        c.pop("coverage")
        for r in c["rows"]:
            for key in ("observed", "expected", "relative_error", "judged", "ill_reason", "diagnosis", "diagnosis_note"):
                r.pop(key)
    doc["cells"][0]["rows"][0]["a field from a newer bnconf"] = 1
    report = load_report(json.dumps(doc))
    assert report.results[0].rows[0].judged is None
    line = summary.backend_lines(report)[0]
    assert (line.drawn, line.judged) == (48, None)  # judged unknown, not zero
    assert f"| example.numpy | 6/6 | {render.NO_FIGURE}/48 |" in render.markdown(report)
    render.html_page(report)
    render.terminal(report)


def test_a_document_that_is_not_a_report_is_refused():
    with pytest.raises(ValueError, match="bnconf-report/1"):
        load_report('{"format": "something else"}')


def test_a_quantity_row_keeps_none_for_figures_without_meaning():
    assert render.number(None) == render.NO_FIGURE and render.number(float("inf")) == "inf"
    row = QuantityRow("y", max_ulp=None)
    assert render._cell_rows([reports.cell("b", "float32", "eval_forward", [row])])[0][8] == render.NO_FIGURE
