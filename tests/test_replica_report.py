"""The distributed part of a report (issue 17, item 4): hand-built ReplicaCells (conforming, NON-CONFORMANT with a
named mistake, a known discrepancy, unsupported with its reason, crashed, timed out) in every format: the matrix,
why cells did not run, the quantities that do not conform, every quantity in the HTML (filterable), JSON that
reads back, summary lines and findings, the synchronized backends against each other; the Markdown stays small
for a large set; the CLI's --replicas/--world-sizes. No backend runs here (but one CLI run of the NumPy example)."""

import html
import importlib.util
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bnconf.conformance import crosscheck
from bnconf.conformance.crosscheck import PairRow
from bnconf.conformance.replica_pairs import ReplicaPairResult
from bnconf.conformance.replica_results import ReplicaCell, ReplicaRow
from bnconf.reports import render, replica_table, summary
from bnconf.reports.load import load_report
from bnconf.spec.replica_conventions import REPLICA_CONVENTIONS

_SPEC = importlib.util.spec_from_file_location("synthetic_reports", Path(__file__).parent / "fixtures" / "reports.py")
reports = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reports)

QUANTITIES = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta")
MISTAKE = "running variance Bessel-corrected with the local count"
REPLAY = "bnconf replay /tmp/r/r-cases/replicas/local-bessel-w3 --backend mutants.py:LOCAL_BESSEL"
CRASH_REPLAY = "bnconf replay /tmp/r/r-cases/replicas/ddp-w3 --backend torch_replicas.py:DDP"
GPU_ONLY = "GPU-only: torch.nn.SyncBatchNorm needs a CUDA device (none here)"
NO_MASK = "hk.BatchNorm has no mask argument: shards of different sizes cannot be expressed"
SETTINGS = ((1, "equal", [4]), (2, "equal", [4, 4]), (3, "unequal", [6, 2, 7]))


def ok(quantity: str, ratio: float = 0.25) -> ReplicaRow:
    return ReplicaRow(quantity, "conforms", max_ratio=ratio, observed=0.8125, expected=0.8125001, bound=1e-6,
                      worst="replica 1, (0, 2)", judged=2, examples=2)


def wrong() -> ReplicaRow:
    return ReplicaRow("running_var", "convention difference", max_ratio=3.1e4, observed=2.25, expected=1.5, bound=1e-6,
                      worst="replica 2, channel 1", mistake=MISTAKE, detail="residual 2e-08 of bound 1e-06",
                      judged=2, examples=2)


def cells_of(backend: str, semantics: str = "synchronized", dtype: str = "float32", **at_unequal) -> list[ReplicaCell]:
    """One backend's cells at SETTINGS, all conforming but for what `at_unequal` sets on the W=3 unequal cell."""
    out = []
    for w, split, rows in SETTINGS:
        cell = ReplicaCell(backend, w, split, rows, dtype, rows=[ok(q) for q in QUANTITIES], seconds=0.5,
                           semantics=semantics)
        if split == "unequal":
            for k, v in at_unequal.items():
                setattr(cell, k, v)
        out.append(cell)
    return out


def replica_cells() -> list[ReplicaCell]:
    known = [ok(q) for q in QUANTITIES]
    known[0] = ReplicaRow("y", "known discrepancy", max_ratio=900.0, known="flax-equal-weight", judged=2, examples=2,
                          mistake="combine weighted as if shards were equal")
    bessel = [ok(q) for q in QUANTITIES]
    bessel[2] = wrong()
    return (cells_of("example synchronized (NumPy)", dtype="float64")
            + cells_of("flax.linen.BatchNorm(axis_name)", rows=known, discrepancies={"flax-equal-weight": [2, 2]})
            + cells_of("mutant: local Bessel", rows=bessel, replay=REPLAY)
            + cells_of("haiku.BatchNorm(cross_replica_axis)", status="unsupported", reason=NO_MASK, rows=[])
            + [ReplicaCell("torch.nn.SyncBatchNorm", w, s, r, "float32", status="unsupported", reason=GPU_ONLY,
                           semantics="synchronized") for w, s, r in SETTINGS]
            + cells_of("torch DDP(BatchNorm)", "per-replica", status="crashed", rows=[], replay=CRASH_REPLAY,
                       reason="replica 1 died (signal 11) during the step")
            + cells_of("naive SyncBN", status="timed out", rows=[], reason="no answer from the replicas within 60 s"))


UNLOADED = [{"family": "keras", "reason": "tensorflow is not installed (pip install 'bnconf[keras,tensorflow]')"}]
NUMPY, FLAX, HAIKU = "example synchronized (NumPy)", "flax.linen.BatchNorm(axis_name)", "haiku.BatchNorm(cross_replica_axis)"
ESTIMATOR = "running variance estimator (predicted 0.0667 relative at n=16)"
FLAX_RECORD = f"{FLAX} as recorded in flax-equal-weight"


def setting(a: str, b: str, w: int, split: str, **differ) -> ReplicaPairResult:
    """A pair's setting that ran: every quantity matches but for `differ` (quantity -> (verdict, residuals))."""
    rows = []
    for q in QUANTITIES:
        verdict, residuals = differ.get(q, (crosscheck.MATCHES, ""))
        rows.append(PairRow(a, b, "training step", q, verdict, 0.0 if verdict == crosscheck.MATCHES else 0.07,
                            residuals, examples=2))
    return ReplicaPairResult(a, b, w, split, "float32", rows=rows)


def replica_pairs(unexpected: bool = False) -> list[ReplicaPairResult]:
    """NumPy vs Flax: the running variance estimator predicted, Flax's equal-weight record on unequal shards;
    NumPy vs Haiku: unequal not comparable (no mask), equal matches; NumPy vs SyncBatchNorm: no common device;
    with `unexpected`, NumPy vs the local-Bessel mutant: running_var UNEXPECTED at W=3 unequal."""
    out = [setting(NUMPY, FLAX, 2, "equal", running_var=(crosscheck.PREDICTED, ESTIMATOR)),
           setting(NUMPY, FLAX, 3, "unequal", running_var=(crosscheck.PREDICTED, ESTIMATOR),
                   y=(crosscheck.PREDICTED, FLAX_RECORD), dx=(crosscheck.PREDICTED, FLAX_RECORD)),
           ReplicaPairResult(NUMPY, HAIKU, 3, "unequal", "float32", status="not comparable", reason=NO_MASK),
           setting(NUMPY, HAIKU, 3, "equal"),
           ReplicaPairResult(NUMPY, "torch.nn.SyncBatchNorm", 0, "-", "-", "-", "not comparable",
                             "no device both run on now (cpu vs cuda)")]
    if unexpected:
        out.append(setting(NUMPY, "mutant: local Bessel", 3, "unequal", running_var=(crosscheck.UNEXPECTED, "")))
    return out


def report(name: str = "r", conforms: bool = False, unexpected: bool = False) -> render.Report:
    return render.Report([], {"python": "3.11"}, 0, 2, conforms, name=name, replica_cells=replica_cells(),
                         replica_unavailable=UNLOADED, replica_pairs=replica_pairs(unexpected))


# ---------------------------------------------------------------- the tables' data


def test_the_matrix_has_a_row_per_backend_and_a_column_per_world_size_and_split():
    header, rows = replica_table.matrix(replica_cells())
    assert header == ["backend", "semantics", "device", "dtype", "W=1 equal", "W=2 equal", "W=3 unequal"]
    by = {row[0]: row[4:] for row in rows}
    assert by["example synchronized (NumPy)"] == ["conforms"] * 3
    assert by["flax.linen.BatchNorm(axis_name)"][2] == "known (flax-equal-weight)"
    assert by["mutant: local Bessel"][2] == f"NON-CONFORMANT ({MISTAKE})"
    assert by["haiku.BatchNorm(cross_replica_axis)"] == ["conforms", "conforms", "unsupported [1]"]
    assert by["torch.nn.SyncBatchNorm"] == ["unsupported [2]"] * 3
    assert by["torch DDP(BatchNorm)"][2] == "CRASHED" and by["naive SyncBN"][2] == "TIMED OUT"
    assert replica_table.legend_rows(replica_cells()) == [
        ["[1]", "unsupported", NO_MASK, "haiku.BatchNorm(cross_replica_axis) (1)"],
        ["[2]", "unsupported", GPU_ONLY, "torch.nn.SyncBatchNorm (3)"]]


def test_the_compact_matrix_has_a_column_per_split_and_points_to_its_legend():
    header, rows = replica_table.matrix(replica_cells(), compact=True)
    assert header[4:] == ["equal", "unequal"]  # each over the world sizes where the split exists
    by = {row[0]: row[4:] for row in rows}
    assert by["flax.linen.BatchNorm(axis_name)"] == ["conforms", "known [1]"]
    assert by["mutant: local Bessel"] == ["conforms", "NON-CONFORMANT [2]"]
    assert by["haiku.BatchNorm(cross_replica_axis)"] == ["conforms", "unsupported [3]"]
    assert by["torch.nn.SyncBatchNorm"] == ["unsupported [4]"] * 2
    cells = replica_cells()
    cells[1].status, cells[1].rows = "timed out", []  # the NumPy example at W=2 equal
    by = {row[0]: row[4:] for row in replica_table.matrix(cells, compact=True)[1]}
    assert by["example synchronized (NumPy)"][0] == "W=1: conforms; W=2: TIMED OUT"
    legend = replica_table.legend_rows(replica_cells(), compact=True)
    assert [row[:3] for row in legend[:2]] == [["[1]", "known", "flax-equal-weight"], ["[2]", "NON-CONFORMANT", MISTAKE]]


def test_a_failing_row_without_a_named_mistake_is_unexplained():
    cell = cells_of("b")[2]
    cell.rows[3] = ReplicaRow("dx", "non-conformant", max_ratio=50.0)
    assert replica_table.cell_text(cell) == "NON-CONFORMANT (unexplained: dx)"
    assert replica_table.row_verdict(cell.rows[3]) == "NON-CONFORMANT"
    assert replica_table.row_why(cell.rows[3]) == "unexplained"
    named = ReplicaRow("y", "non-conformant", mistake=MISTAKE, detail=f"{MISTAKE} (error/bound 0.1 under it)")
    assert replica_table.row_why(named) == f"{MISTAKE} (error/bound 0.1 under it)"  # the name once


def test_every_quantity_is_a_row_and_cells_that_did_not_run_are_folded_per_reason():
    rows = replica_table.quantity_rows(replica_cells())
    header = replica_table.QUANTITY_HEADER
    col = {h: header.index(h) for h in header}
    ran = 3 + 3 + 3 + 2  # numpy, flax, mutant, haiku's two equal settings
    folded, failed = 2, 2  # haiku's and SyncBatchNorm's reasons; DDP and naive SyncBN at W=3
    assert len(rows) == ran * 6 + folded + failed + 2 * 2 * 6  # DDP and naive SyncBN ran W=1, W=2
    sync = [r for r in rows if r[0] == "torch.nn.SyncBatchNorm"]
    assert sync == [["torch.nn.SyncBatchNorm", "synchronized", "cpu", "float32", "1, 2, 3", "equal, unequal", "", "-",
                     "", "", "unsupported", GPU_ONLY, "", "", "", ""]]
    (bad,) = [r for r in rows if r[col["verdict"]].startswith("NON")]
    assert bad[col["verdict"]] == "NON-CONFORMANT (convention difference)"
    assert bad[col["named mistake / why"]] == f"{MISTAKE}; residual 2e-08 of bound 1e-06"
    assert (bad[col["rows per replica"]], bad[col["observed / expected"]], bad[col["replay"]]) == ("6+2+7", "2.25 / 1.5", REPLAY)
    assert [r[col["verdict"]] for r in replica_table.failing_rows(replica_cells())] == [
        "NON-CONFORMANT (convention difference)", "CRASHED", "TIMED OUT"]


def test_synchronized_backends_are_compared_after_translation():
    header = replica_table.PAIR_HEADER
    settings = replica_table.pair_setting_rows(replica_pairs(unexpected=True))
    assert [row[:6] for row in settings][:3] == [[NUMPY, FLAX, 2, "equal", "float32", "ran"],
                                                 [NUMPY, FLAX, 3, "unequal", "float32", "ran"],
                                                 [NUMPY, HAIKU, 3, "unequal", "float32", "not comparable"]]
    kinds = slice(header.index(replica_table.MATCHES), header.index(replica_table.UNEXPECTED) + 1)
    assert settings[1][kinds] == [3, 1, 2, 0]  # matches, predicted, recorded, UNEXPECTED
    assert f"running_var: differs as the spec predicts (0.07; {ESTIMATOR})" in settings[1][-1]
    assert f"y: differs as recorded (0.07; {FLAX_RECORD})" in settings[1][-1]
    assert settings[2][-1] == NO_MASK and settings[4][2] == "-"
    pairs = {(r[0], r[1]): r[2:] for r in replica_table.pair_rows(replica_pairs(unexpected=True))}
    assert pairs[NUMPY, FLAX] == [replica_table.RECORDED, 2, 0, 0, 8, 2, 2, 0]
    assert pairs[NUMPY, HAIKU] == [replica_table.MATCHES, 1, 1, 0, 6, 0, 0, 0]
    assert pairs[NUMPY, "torch.nn.SyncBatchNorm"][:4] == ["not comparable", 0, 1, 0]
    assert pairs[NUMPY, "mutant: local Bessel"][0] == replica_table.UNEXPECTED
    errored = replica_pairs() + [ReplicaPairResult(NUMPY, FLAX, 2, "unequal", "float32", status="error",
                                                   reason="ReplicaCrash: replica 1 died")]
    assert {(r[0], r[1]): r[2] for r in replica_table.pair_rows(errored)}[NUMPY, FLAX] == "error"


def test_the_report_tables_use_crosschecks_verdicts():
    assert (replica_table.MATCHES, replica_table.PREDICTED, replica_table.UNEXPECTED) == (
        crosscheck.MATCHES, crosscheck.PREDICTED, crosscheck.UNEXPECTED)
    from bnconf.conformance import replica_pairs as module

    assert replica_table.RECORDED_MARK == module.RECORDED_MARK


def test_an_unexpected_pair_difference_is_a_finding_and_fails_the_run():
    r = report(conforms=True, unexpected=True)
    (found,) = [f for f in summary.findings(r) if " vs " in f.backend]
    assert (found.backend, found.where, found.subject, found.verdict) == (
        f"{NUMPY} vs mutant: local Bessel", "distributed W=3 unequal float32", "running_var", crosscheck.UNEXPECTED)
    assert not render.conforms(render.Report([], {}, 0, 2, True, replica_pairs=replica_pairs(unexpected=True)))
    assert render.conforms(render.Report([], {}, 0, 2, True, replica_pairs=replica_pairs()))
    from bnconf.conformance import run

    state = run.RunState(0)
    state.replica_pairs.extend(replica_pairs(unexpected=True))
    assert run.failures(state, []) == [f"{NUMPY} vs mutant: local Bessel W=3 unequal float32 running_var: "
                                       f"{crosscheck.UNEXPECTED}"]


def test_the_records_used_are_listed_with_their_counts():
    (row,) = replica_table.discrepancy_rows(replica_cells())
    assert row[:5] == ["flax-equal-weight", "flax.linen.BatchNorm(axis_name)", 2, 2, "in use"]
    stale = replica_cells()
    for c in stale:
        c.discrepancies = {k: [v[0], 0] for k, v in c.discrepancies.items()}
    assert replica_table.discrepancy_rows(stale)[0][4].startswith("STALE")


# ---------------------------------------------------------------- summary and findings


def test_replica_backends_have_summary_lines_and_their_failures_are_findings():
    lines = {line.backend: line for line in summary.backend_lines(report())}
    numpy_line = lines["example synchronized (NumPy)"]
    assert (numpy_line.cells, numpy_line.unsupported, numpy_line.conforms, numpy_line.verdict) == (3, 0, 18, "conforms")
    assert (numpy_line.drawn, numpy_line.judged) == (6, 6)
    assert (lines["flax.linen.BatchNorm(axis_name)"].known, lines["flax.linen.BatchNorm(axis_name)"].verdict) == (1, "conforms")
    assert (lines["mutant: local Bessel"].non_conformant, lines["mutant: local Bessel"].worst_ratio) == (1, 3.1e4)
    assert lines["haiku.BatchNorm(cross_replica_axis)"].unsupported == 1
    assert lines["torch.nn.SyncBatchNorm"].verdict == "unsupported"
    assert (lines["torch DDP(BatchNorm)"].errors, lines["torch DDP(BatchNorm)"].verdict) == (1, "ERROR")
    found = summary.findings(report())
    assert [(f.backend, f.verdict) for f in found] == [
        ("mutant: local Bessel", "NON-CONFORMANT (convention difference)"), ("torch DDP(BatchNorm)", "CRASHED"),
        ("naive SyncBN", "TIMED OUT")]
    bessel, crash, _ = found
    assert bessel.where == "cpu float32 W=3 unequal (rows 6+2+7)" and bessel.subject == "running_var"
    assert bessel.diagnosis.startswith(MISTAKE) and bessel.replay == REPLAY
    assert (bessel.observed, bessel.expected, bessel.relative_error, bessel.ratio) == (2.25, 1.5, 0.5, 3.1e4)
    assert crash.diagnosis == "replica 1 died (signal 11) during the step" and crash.replay == CRASH_REPLAY


def test_the_headline_counts_the_distributed_part():
    r = report(conforms=True)  # the single-device part conformed; the distributed part did not
    assert render.terminal(r).splitlines()[0] == "bnconf discrepancy report: NON-CONFORMANT quantities found"
    assert json.loads(render.json_document(r))["conforms"] is False
    clean = render.Report([], {}, 0, 2, True, replica_cells=cells_of("a") + cells_of("b"))
    assert "everything conforms" in render.markdown(clean)
    assert "Distributed: 6 of 6 cells ran (0 unsupported or skipped): 6 conform" in render.markdown(clean)


# ---------------------------------------------------------------- every format


def test_the_terminal_shows_the_matrix_the_reasons_and_the_failures():
    text = render.terminal(report())
    assert text.index("Summary") < text.index("Findings (3)") < text.index("Distributed: each backend across replicas")
    assert "NON-CONFORMANT [2]" in text and MISTAKE in text and "unsupported [4]" in text and GPU_ONLY in text
    assert "tensorflow is not installed" in text
    assert "Distributed: quantities that do not conform (3)" in text and "CRASHED" in text and "TIMED OUT" in text
    assert REPLAY in text and CRASH_REPLAY in text  # on the findings' lines
    assert "Distributed: every quantity" not in text


def test_the_markdown_has_the_matrix_and_the_rows_that_do_not_conform_only():
    md = render.markdown(report())
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["## Summary", "## Findings (3)", "## Distributed: each backend across replicas, per world size (W) and split",
                        "## Distributed: the marks in the matrix", "## Distributed: backend families that did not load",
                        "## Distributed: quantities that do not conform (3)",
                        "## Distributed: synchronized implementations against each other after translation", "## Full tables"]
    assert "| mutant: local Bessel | synchronized | cpu | float32 | conforms | NON-CONFORMANT [2] |" in md
    assert f"| [2] | NON-CONFORMANT | {MISTAKE} | mutant: local Bessel (1) |" in md
    assert f"| [4] | unsupported | {GPU_ONLY} | torch.nn.SyncBatchNorm (3) |" in md
    # the pairs: counts per verdict in the note, a table row only for an UNEXPECTED or error pair
    assert f"| {NUMPY} | {FLAX} | differs as recorded" not in md and f"| {NUMPY} | {HAIKU} |" not in md
    assert "1 differs as recorded" in md and "1 matches after translation" in md and "1 not comparable" in md
    assert md.count("| running_var |") == 1  # only the failing quantity; every quantity is in the HTML
    assert "every quantity of the distributed part (94 rows)" in md


def test_the_html_has_every_quantity_in_a_filterable_table():
    page = render.html_page(report())
    table = page[page.index('id="replicas"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr class") + table.count("<tr data") == len(replica_table.quantity_rows(replica_cells()))
    assert 'id="replicas-filter-text"' in page and 'data-table="replicas" data-prefix="replicas-"' in page
    assert table.count('data-verdict="NON-CONFORMANT"') == 1 and table.count('data-verdict="ERROR"') == 2
    assert table.count('data-verdict="unsupported"') == 2 and GPU_ONLY in page
    assert f"NON-CONFORMANT ({MISTAKE})" in page  # the HTML matrix says it in full
    assert page.index('id="summary"') < page.index("Distributed: each backend")


def test_the_json_holds_every_cell_and_reads_back_to_the_same_report():
    r = report()
    text = render.json_document(r)
    doc = json.loads(text)
    assert len(doc["replicas"]) == len(replica_cells())
    assert doc["replicas"][8]["rows"][2]["mistake"] == MISTAKE and doc["replicas"][8]["replay"] == REPLAY
    assert {c["backend"] for c in doc["replicas"] if c["status"] == "unsupported"} == {
        "haiku.BatchNorm(cross_replica_axis)", "torch.nn.SyncBatchNorm"}
    assert "torch.nn.SyncBatchNorm" in doc["seconds_per_backend"]
    again = load_report(text)
    again.name = r.name
    assert again.replica_cells == r.replica_cells and again.replica_unavailable == UNLOADED
    assert again.replica_pairs == r.replica_pairs and len(doc["replica_pairs"]) == len(replica_pairs())
    assert render.markdown(again) == render.markdown(r) and render.json_document(again) == text


def test_a_report_written_before_the_distributed_part_still_loads():
    doc = json.loads(render.json_document(reports.small_report()))
    del doc["replicas"], doc["replica_pairs"]
    again = load_report(json.dumps(doc))
    assert again.replica_cells == [] and again.replica_pairs == []
    assert "Distributed" not in render.markdown(again)
    doc = json.loads(render.json_document(report()))
    doc["replicas"][0]["a field from a newer bnconf"] = 1
    doc["replicas"][0]["rows"][0].pop("bound")
    assert load_report(json.dumps(doc)).replica_cells[0].rows[0].bound is None


def _large(backends: int = 12) -> list[ReplicaCell]:
    """12 backends x 14 cells (world sizes 1-4, four split patterns) x 6 quantities, one NON-CONFORMANT row per
    backend, a known one per backend, and one backend unsupported everywhere."""
    settings = [(1, "equal", [4]), (1, "one value per replica", [1])] + [
        (w, split, rows) for w in (2, 3, 4) for split, rows in (("equal", [4] * w), ("unequal", [6, 2, 7, 3][:w]),
                                                              ("empty shard", [6, 0, 7, 3][:w]),
                                                              ("large |mean|/std", [6] * w))]
    names = list(REPLICA_CONVENTIONS) + [f"{n} [copy]" for n in REPLICA_CONVENTIONS]  # the real backends' names
    out = []
    for b in range(backends):
        name = names[b]
        for k, (w, split, rows) in enumerate(settings):
            if b == 0:
                out.append(ReplicaCell(name, w, split, rows, "float32", status="unsupported", reason=GPU_ONLY,
                                       semantics="synchronized"))
                continue
            cell = ReplicaCell(name, w, split, rows, "float32", rows=[ok(q) for q in QUANTITIES], semantics="synchronized")
            if k == 5:
                cell.rows[2], cell.replay = wrong(), REPLAY
            if k == 6:
                cell.rows[0] = ReplicaRow("y", "known discrepancy", max_ratio=9.0, known=f"record-{b}")
            out.append(cell)
    assert len(out) == backends * 14 and sum(len(c.rows) for c in out) == (backends - 1) * 14 * 6
    return out


def _distributed_part(md: str) -> int:
    """Bytes of the Markdown's distributed sections."""
    return sum(len(part.encode()) for part in re.split(r"\n(?=## )", md) if part.startswith("## Distributed"))


def test_the_markdown_stays_small_for_twelve_backends_at_fourteen_settings():
    big = reports.big_report()  # the CPU report's single-device part, larger than the real one
    big.replica_cells = _large()
    md = render.markdown(big)
    assert _distributed_part(md) < 8_000, _distributed_part(md)  # about 6.8 KB, 3 KB of it the 10 failing rows
    assert "## Distributed: quantities that do not conform (11)" in md and "1 more rows in cpu.html" in md
    assert render.html_page(big).count('data-verdict="NON-CONFORMANT"') >= 11
    broken = _large()  # every quantity of every cell that ran NON-CONFORMANT: findings and tables stay bounded
    for c in broken:
        c.rows = [wrong() for _ in c.rows]
    md = render.markdown(render.Report([], {}, 0, 2, False, replica_cells=broken, name="cpu"))
    assert "## Findings (924)" in md and len(md.encode()) < 20_000, len(md.encode())


# ---------------------------------------------------------------- the filter in a browser

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


class _Rows(HTMLParser):
    """The distributed table's rows in the dumped DOM: (data-verdict, data-backend, hidden)."""

    def __init__(self):
        super().__init__()
        self.rows, self._inside = [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._inside = a.get("id") == "replicas"
        elif tag == "tr" and self._inside and "data-verdict" in a:
            self.rows.append((a["data-verdict"], a["data-backend"], "hidden" in a))

    def handle_endtag(self, tag):
        if tag == "table":
            self._inside = False


def _shown(tmp_path, fragment: str, action: str = "") -> list[tuple[str, str]]:
    """The distributed table's visible rows once the page opened at `fragment` (after the JS `action`) settled."""
    page = render.html_page(render.Report(reports.small_report().results, {}, 0, 2, False, replica_cells=replica_cells()))
    probe = f"<script>{action}</script>" if action else ""
    (tmp_path / "r.html").write_text(page.replace("</body>", probe + "</body>"))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900", "--virtual-time-budget=20000",
           "--dump-dom", (tmp_path / "r.html").as_uri() + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = _Rows()
    parser.feed(done.stdout)
    assert parser.rows, done.stdout[:2000]
    return [(verdict, backend) for verdict, backend, hidden in parser.rows if not hidden]


@pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_the_distributed_table_filters_by_its_own_url_keys_and_a_summary_click(tmp_path):
    shown = _shown(tmp_path, "#replicas-verdict=NON-CONFORMANT,ERROR&verdict=conforms")
    assert shown == [("NON-CONFORMANT", "mutant: local Bessel"), ("ERROR", "torch DDP(BatchNorm)"),
                     ("ERROR", "naive SyncBN")], shown
    click = 'document.querySelector("#backends tr[data-backend=\'naive SyncBN\']").click();'
    shown = _shown(tmp_path, "", click)
    assert {b for _, b in shown} == {"naive SyncBN"} and len(shown) == 1 + 2 * 6, shown


# ---------------------------------------------------------------- the command line


def test_bad_world_sizes_are_one_line_with_exit_2(tmp_path, capsys):
    from bnconf.reports.cli import main

    for bad in ("0,2", "a", "1,,2", "9"):
        assert main(["report", "--world-sizes", bad, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "--world-sizes must be a comma-separated list" in err and err.count("\n") == 1, err


def test_the_replica_options_reach_the_run(tmp_path, monkeypatch):
    from bnconf.conformance import run
    from bnconf.reports.cli import main

    seen = []
    monkeypatch.setattr(run, "execute", lambda backends, cells, options, *a, **k: seen.append(options))
    example = "bnconf.adapters.example_numpy:BACKEND"
    for extra in ([], ["--replicas", "--world-sizes", "4,2,2"], ["--no-replicas"]):
        assert main(["report", "--backend", example, "--dtype", "float64", "--out", str(tmp_path), *extra]) == 0
    selected, asked, off = seen
    assert not selected.replicas  # --backend selects backends: the distributed part only when asked
    assert asked.replicas and asked.world_sizes == (2, 4) and asked.replica_dtypes == ("float64",)
    assert not off.replicas
    assert main(["validate", example, "--out", str(tmp_path)]) == 0 and not seen[-1].replicas


def test_the_full_report_runs_the_distributed_part_by_default(tmp_path, monkeypatch):
    from bnconf.conformance import run
    from bnconf.reports.cli import main

    seen = []
    monkeypatch.setattr(run, "execute", lambda backends, cells, options, *a, **k: seen.append(options))
    monkeypatch.delenv("BNCONF_BACKENDS", raising=False)
    monkeypatch.setattr("bnconf.conformance.selection.backends", lambda targets: (
        [__import__("bnconf.adapters.example_numpy", fromlist=["BACKEND"]).BACKEND], []))
    assert main(["report", "--out", str(tmp_path), "--world-sizes", "1,3"]) == 0
    assert seen[0].replicas and seen[0].world_sizes == (1, 3)


def test_the_published_report_takes_the_run_state_replica_cells(tmp_path):
    from bnconf.conformance import run
    from bnconf.reports.output import ReportFolder
    from bnconf.reports.publish import Publisher

    from bnconf.adapters.registry import Unavailable

    state = run.RunState(0)
    state.replica_cells.extend(replica_cells())
    state.replica_unavailable.append(Unavailable("keras", UNLOADED[0]["reason"]))
    folder = ReportFolder(tmp_path, "p")
    folder.claim()
    try:
        Publisher(folder, "p", state, [], {}, 0, 2, lambda s: run.failures(s, [])).write_all("complete", with_figures=False)
    finally:
        folder.release()
    doc = json.loads((tmp_path / "p.json").read_text())
    assert len(doc["replicas"]) == len(replica_cells()) and doc["conforms"] is False
    assert doc["replicas_unavailable"] == UNLOADED
    assert "## Distributed: each backend across replicas" in (tmp_path / "p.md").read_text()
    assert re.search(r'<table class="sortable" id="replicas"', html.unescape((tmp_path / "p.html").read_text()))


def test_the_markdown_lists_an_unexpected_pair_in_its_table():
    md = render.markdown(report(unexpected=True))
    section = md[md.index("## Distributed: synchronized implementations"):]
    assert "1 UNEXPECTED difference" in section
    assert f"| {NUMPY} | mutant: local Bessel | UNEXPECTED difference |" in section
    assert f"| {NUMPY} | {FLAX} |" not in section
