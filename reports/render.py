"""Rendering a run: terminal tables, Markdown, HTML and JSON, all from the same `Report`.

A merged report (`bnconf merge`, reports/merge.py) is a Report too: every backend "<backend> @ <environment>",
and its environments, backend x environment matrix and pairs per pair of environments first among the tables of
every format (reports/merge_table.py).

Every format opens with the summary (summary.py: one line per backend, then the findings with their diagnosis
and replay line). Then:
- terminal and HTML: the full tables, built once by `sections` (the HTML's conformance table filterable and
  sortable, page.py);
- Markdown (`<name>.md`, the file to read in a minute): only short per-backend tables (`markdown_sections`),
  and where the full tables are: `<name>.html` and `<name>.json`.
The distributed part (replica backends at world sizes x split patterns, replica_table.py) in every format: its
matrix (one row per backend) and why cells did not run; the HTML its every quantity (filterable and sortable)
and the synchronized implementations against each other; Markdown and terminal only the quantities that do
not conform and one line per pair of synchronized backends; JSON everything, under "replicas" and
"replica_pairs".

JSON layout (`bnconf-report/1`):
    {"format": "bnconf-report/1", "status": "complete"|"running"|"interrupted", "cells_planned": int,
     "seed": int, "examples": int, "shard": "K/N" or "", "conforms": bool,
     "environment": {"python": str, "numpy": str, "<framework>": str, "machine": str},
     "cells": [{"backend", "convention", "device", "dtype", "mode",
                "status": "ran"|"unsupported"|"error"|"crashed"|"timed out"|"out of memory"|"not run",
                "reason", "seconds", "discrepancies": {"<id>": [covered, needed]},
                "coverage": {"affine on|off, running on|off": [examples drawn, examples judged]},
                "points": [[max |mean|/std, values per channel, quantity, normwise error, error/bound], ...],
                "rows": [{"quantity", "verdict": "conforms"|"known discrepancy"|"ill-conditioned"|"NON-CONFORMANT",
                          "failure" (the spec's verdict of a NON-CONFORMANT row's worst case), "max_error",
                          "max_ratio", "max_ulp" (null: no meaningful figure), "detail", "worst_input", "discrepancy",
                          "examples" (drawn), "judged" (examples with a judged element), "failures",
                          "observed", "expected", "relative_error" (at the shown case's worst element; null: none),
                          "ill_reason" (an ill-conditioned row: which condition number, how large),
                          "diagnosis", "diagnosis_note" (a NON-CONFORMANT row: the named mistake or "unexplained",
                          its residual and the runner-up),
                          "replay" (a NON-CONFORMANT row: `bnconf replay <folder> --backend <target>`, its worst case
                          saved under <out>/<name>-cases; an ERROR cell's reason ends with its first case's)}]}],
     "discrepancies": [{"id", "backends", "covered", "needed", "status", "explanation", "evidence",
                        "source": "built-in"|"backend"|"<the --records target>"}],
     "inferred": [{"backend", "property", "value", "agrees", "verdict", "evidence", "candidates": {hypothesis: residual},
                   "dtype" (the probes' dtype), "replay" (a DIFFERS row: the command that reruns its deciding probe)}],
     "edge": [{"backend", "device", "dtype", "case", "mode", "agrees", "outcome", "recorded"}],
     "edge_records": [{"id", "source", "backends", "case", "status": "in use (k outcome(s))"|"STALE: ...",
                       "explanation", "evidence"}]   (each recorded edge behaviour that covered an outcome)
     "pairs": [{"source", "target", "mode", "status": "ran"|"not comparable"|"error", "reason",
                "rows": [{"quantity", "verdict", "max_relative", "residuals", "worst_input", "examples"}]}],
     "replicas": [{"backend", "world_size", "split", "rows_per_replica": [int per replica], "dtype", "device",
                   "status": "ran"|"unsupported"|"skipped"|"crashed"|"timed out"|"error", "reason", "seconds",
                   "replay", "semantics": "synchronized"|"per-replica",
                   "rows": [{"quantity", "verdict" (a spec verdict or "known discrepancy"), "max_ratio", "observed",
                             "expected", "bound", "worst", "mistake" (the named mistake), "detail", "known" (the
                             record id), "judged", "examples"}]}]   (conformance/replica_results.py)
     "replicas_unavailable": [{"family", "reason"}]   (replica backend families that did not load)
     "replica_pairs": [{"source", "target", "world_size", "split", "dtype", "device", "status": "ran"|"not comparable"|
                        "error", "reason", "seconds", "rows": [as in "pairs", "mode": "training step"]}]
                      (synchronized replica backends against each other: conformance/replica_pairs.py)
     "seconds_per_backend": {"<backend>": float},   (replica backends included)
     "spec": {"bnconf": "<version>", "digest": "<sha256 of the spec's sources>"}   (reports/spec_identity.py: which
             rules judged the run; `bnconf merge` merges only reports of one spec)
     "pair_outputs": {"<backend>": [rows]}   (each backend's outputs on the canonical pair inputs, for `bnconf
             merge`; the row layout is in conformance/pair_outputs.py; empty with --pair-examples 0)
     "environments": [...]   (a merged report only: one entry per report merged, reports/merge.py)
     "summary": {"backends": [{"backend", "cells", "unsupported", "drawn", "judged", "conforms", "known",
                               "ill_conditioned", "non_conformant", "errors", "edge": [agree, recorded, unexplained],
                               "other_findings", "worst_ratio", "verdict"}],
                 "findings": [{"backend", "where", "subject", "verdict", "diagnosis", "observed", "expected",
                               "relative_error", "ratio", "judged", "drawn", "replay"}]}}
       (derived from the rest, for readers of the JSON; `load.load_report` reads a report back without it)
Non-finite numbers are the strings "nan", "inf", "-inf" (strict JSON has none).
`max_ratio` is the largest error in units of the error model's bound; `max_ulp` the error in ULPs of the
quantity's format; a discrepancy entry is "in use" when some case needed it, "STALE" when it covered cases
and none needed it. Pair verdicts: "matches after translation", "differs as the spec predicts", "UNEXPECTED
difference". Timestamps are deliberately absent: the same seed gives the same file but for timings.
The JSON file is rewritten (atomically) as cells arrive while the run goes on ("status": "running"; a large
report skips rewrites that would take over a tenth of the run's time, so it is at most about a second
behind), so a run killed or interrupted leaves a valid partial report; Ctrl-C writes every format with
"interrupted". Reports written before a field existed still load (`load.py`: missing fields take defaults).
"""

import html
import json
import re
import urllib.parse
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from . import page
from .edge_table import EDGE_RECORD_HEADER, edge_matrix_rows, edge_record_rows, edge_section_rows, edge_summary
from ..conformance.status import CellStatus
from . import replica_table
from .summary import (UNEXPECTED_PAIR, BackendLine, Finding, backend_lines, findings, reason_replays,
                      replica_pair_findings, totals)
from .spec_identity import spec_identity
from .terminal import NO_FIGURE, examples_text, number, one_line, table

FORMAT = "bnconf-report/1"
TITLE = "bnconf discrepancy report"
CELL_HEADER = ["backend", "device", "dtype", "mode", "quantity", "examples judged / drawn", "max error", "error / bound",
               "ulps", "verdict", "observed / expected", "relative error", "worst input", "replay"]
NO_FINDINGS = "None: no quantity, cell, edge case, convention property or pair makes this run non-conformant."
MARKDOWN_FINDINGS = 30  # findings listed in the Markdown; the rest are in the HTML and JSON
MARKDOWN_REPLICA_ROWS = 10  # distributed rows that do not conform, tabled in the Markdown and terminal


@dataclass
class Report:
    results: list  # battery.CellResult
    environment: dict
    seed: int
    examples: int
    conforms: bool
    discrepancies: list = field(default_factory=list)  # battery.DiscrepancyUse
    pairs: list = field(default_factory=list)  # crosscheck.PairResult
    figures: dict = field(default_factory=dict)  # file name -> (title, PNG bytes), see figures.py
    # convention inference (bnconf validate): {"backend", "property", "value", "agrees", "verdict", "evidence"} rows
    inferred: list = field(default_factory=list)
    status: str = "complete"  # "running" (partial, written as results arrive) or "interrupted"
    cells_planned: int = 0
    edge: list = field(default_factory=list)  # edge-case outcomes, conformance.edge.as_row dicts
    name: str = "report"  # the file stem: the Markdown names <name>.html and <name>.json, where the full tables are
    replica_cells: list = field(default_factory=list)  # the distributed part: conformance.replica_results.ReplicaCell
    # replica backend families that did not load: {"family", "reason"} (adapters/replica_registry.discover_replicas)
    replica_unavailable: list = field(default_factory=list)
    # synchronized replica backends against each other: conformance.replica_pairs.ReplicaPairResult
    replica_pairs: list = field(default_factory=list)
    shard: str = ""  # "K/N": the run was shard K of N (bnconf report --shard); "": every cell
    # each backend's outputs on the canonical pair inputs (conformance/pair_outputs.py): backend name -> rows
    pair_outputs: dict = field(default_factory=dict)
    # a merged report (bnconf merge, reports/merge.py): one entry per report merged, see merge.Environment
    environments: list = field(default_factory=list)


@dataclass
class Section:
    title: str
    header: list[str]
    rows: list[list]
    note: str = ""
    terminal_columns: int | None = None  # the terminal shows only the first columns (the rest is too wide)
    filter_columns: tuple[int, int] | None = None  # (backend, verdict) columns: the HTML table gets a filter bar
    element_id: str = ""  # the HTML table's id


def _row_verdict(r) -> str:
    """A row's verdict with its record id, and what explains it: the diagnosis, the detail, the ill-conditioning."""
    text = r.verdict_text + (f" [{r.discrepancy}]" if r.discrepancy else "")
    diagnosis = getattr(r, "diagnosis", "")
    said = [f"{diagnosis} ({r.diagnosis_note})" if diagnosis and r.diagnosis_note else diagnosis, r.detail,
            getattr(r, "ill_reason", "")]
    said = [s for s in dict.fromkeys(said) if s]
    return text + (": " + "; ".join(said) if said else "")


def _observed_expected(r) -> str:
    observed, expected = getattr(r, "observed", None), getattr(r, "expected", None)
    if observed is None and expected is None:
        return ""
    return f"{number(observed, 6)} / {number(expected, 6)}"


def _quantity_row(c, r) -> list:
    """One quantity of a cell, in CELL_HEADER's columns."""
    seen = _observed_expected(r)
    return [c.backend, c.device, c.dtype, c.mode, r.quantity, examples_text(getattr(r, "judged", None), r.examples),
            number(r.max_error), number(r.max_ratio), number(r.max_ulp), _row_verdict(r), seen,
            number(getattr(r, "relative_error", None)) if seen else "", r.worst_input, getattr(r, "replay", "")]


def _cell_rows(results) -> list[list]:
    """One row per (backend, device, dtype, mode, quantity); unsupported cells folded per backend and device."""
    out, folded = [], set()
    blank = [""] * 4
    for c in results:
        if c.status is CellStatus.UNSUPPORTED:
            if (c.backend, c.device, c.reason) not in folded:
                folded.add((c.backend, c.device, c.reason))
                out.append([c.backend, c.device, "*", "*", "-", *blank, "unsupported", "", "", c.reason, ""])
            continue
        if not c.status.acceptable:  # raised, crashed, timed out, out of memory, not run
            reason, replays = reason_replays(c.reason)
            out.append([c.backend, c.device, c.dtype, c.mode, "-", *blank, c.status.value.upper(), "", "", reason,
                        "; ".join(replays)])
        out += [_quantity_row(c, r) for r in c.rows]
    return out


def _pair_rows(pairs) -> list[list]:
    """One row per (pair, mode, quantity); a pair not comparable for one reason in every mode is one row."""
    out, folded = [], set()
    compared = {(p.source, p.target) for p in pairs if p.status != "not comparable"}
    for p in pairs:
        if p.status == "not comparable":
            if (p.source, p.target) in compared:
                out.append([p.source, p.target, p.mode, "-", p.status, "", p.reason])
            elif (p.source, p.target, p.reason) not in folded:
                folded.add((p.source, p.target, p.reason))
                out.append([p.source, p.target, "*", "-", p.status, "", p.reason])
            continue
        if p.status == "error":
            out.append([p.source, p.target, p.mode, "-", "ERROR", "", p.reason])
            continue
        out += [[p.source, p.target, p.mode, r.quantity, r.verdict, f"{r.max_relative:.3g}", r.residuals or r.worst_input]
                for r in p.rows]
    return out


DECADES = (0, 1, 2, 3, 4)  # bins of log10(max |mean|/std): <10, 10-100, ..., >=1e4
CONDITIONING_DTYPE, CONDITIONING_QUANTITIES = "float32", ("y", "running_var")


def _conditioning_rows(results) -> list[list]:
    """Worst normwise error of each training-forward quantity per decade of |mean|/std, float32 cells."""
    out = []
    for c in results:
        if c.mode != "train_forward" or c.dtype != CONDITIONING_DTYPE or not c.points:
            continue
        for q in CONDITIONING_QUANTITIES:
            worst = [None] * len(DECADES)
            for kappa, _, quantity, err, _ in c.points:
                if quantity == q:
                    k = min(int(np.log10(kappa)) if kappa >= 1 else 0, len(DECADES) - 1)
                    worst[k] = err if worst[k] is None else max(worst[k], err)
            if any(w is not None for w in worst):
                out.append([c.backend, c.device, q] + ["" if w is None else f"{w:.2g}" for w in worst])
    return out


DISCREPANCY_HEADER = ["id", "backends", "cases covered", "cases that needed it", "status", "source", "explanation",
                      "evidence"]


def discrepancy_rows(uses) -> list[list]:
    """One row per known-discrepancy record the run used (battery.DiscrepancyUse), with its evidence."""
    return [[d.id, d.backends, d.covered, d.needed, d.status, getattr(d, "source", "built-in"),
             getattr(d, "explanation", ""), getattr(d, "evidence", "")] for d in uses]


def seconds_per_backend(results, replica_cells=()) -> dict[str, float]:
    totals = defaultdict(float)
    for c in [*results, *replica_cells]:
        totals[c.backend] += c.seconds
    return {k: round(v, 2) for k, v in sorted(totals.items())}


_DISCREPANCIES_NOTE = ("Each record that applies to a backend of the run. Source: built-in (conformance/known/), backend "
                       "(the backend's own known_discrepancies), or the records file named with --records. STALE: it "
                       "covered cases and none needed it (the backend changed: update the record).")
_EDGE_RECORDS_NOTE = ("Each record that covered an outcome of the run. Source: built-in (conformance/known/edge.py), "
                      "backend (the backend's own edge_records), or the records file named with --records. STALE: it "
                      "covered outcomes and explained none (the backend changed: update the record).")
_EDGE_MATRIX_NOTE = ("Per backend and edge case over its modes and dtypes: agrees with the spec (SPEC.md section 5), "
                     "recorded (what it does instead is explained in conformance/known/edge.py), DIFFERS (unexplained) "
                     "or - (not run).")


def _inferred_section(report: Report) -> Section:
    return Section("Convention inferred by probing, against the declared record",
                   ["backend", "property", "inferred", "against the declared record", "evidence", "replay"],
                   [[r["backend"], r["property"], r["value"], r.get("verdict", "agrees" if r["agrees"] else "DIFFERS"),
                     r["evidence"] + (f" (probed in {r['dtype']})" if r.get("dtype") else ""), r.get("replay", "")]
                    for r in report.inferred],
                   note="Designed inputs (conformance/inference_probes.py). \"differs as recorded\": a known "
                        "discrepancy covers a probe that decided the property; DIFFERS: nobody has explained "
                        "it. Each property's candidate hypotheses and their residuals are in the JSON.",
                   terminal_columns=4)


def _edge_matrix_section(report: Report) -> Section:
    return Section("Edge-case behaviour per backend", *edge_matrix_rows(report.edge), note=_EDGE_MATRIX_NOTE)


# ---------------------------------------------------------------- the distributed part

_MATRIX_NOTE = ("Each backend on W replicas (processes or devices), the batch split along axis 0; y, running "
                "statistics, dx, dgamma, dbeta against the float64 oracle: batch norm of the concatenated shards "
                "(synchronized) or of each shard (per-replica). known: a record covers it (its explanation, evidence and "
                "use counts: the HTML); [k]: see the marks.")
_PAIRS_NOTE = ("Each pair of synchronized backends on the same shards (drawn in A's convention; channel axis, momentum "
               "and eps translated to B's with bnconf.spec.translate), one step each, every quantity compared: matches "
               "when |a - b| is within both sides' bounds; differs as the spec predicts when a - b is the difference "
               "of the two conventions' oracles (the translation's residual named, with its predicted relative size); "
               "differs as recorded when a known replica record stands in for a side; else UNEXPECTED. Counts are "
               "quantity rows (y, running_mean, running_var, dx, dgamma, dbeta) per setting.")
_QUANTITIES_NOTE = ("One row per backend, world size, split, dtype and quantity: the worst example's error / bound, "
                    "observed and expected values at its worst element (y and dx concatenated over replicas, running "
                    "statistics stacked per replica). Cells that did not run are folded per backend and reason.")
_RECORDS_NOTE = ("Each record (conformance/known/replicas.py) that covered an example: in use when the declared semantics "
                 "failed there and the recorded behaviour held; STALE when none needed it (update the record).")
_MARKDOWN_QUANTITY_COLUMNS = ("backend", "dtype", "world size", "split", "rows per replica", "quantity", "error / bound",
                              "verdict", "named mistake / why")
_PAIRS_TITLE = "Distributed: synchronized implementations against each other after translation"


def _distributed_sections(report: Report, full: bool) -> list[Section]:
    """The distributed part: its matrix, why cells did not run, the records used, then (full) every quantity
    and every pair of synchronized backends, else the quantities that do not conform (at most
    MARKDOWN_REPLICA_ROWS, their observed values and replay lines in the findings) and the pairs per verdict."""
    cells = report.replica_cells
    missing = Section("Distributed: backend families that did not load", ["family", "reason"],
                      [[u["family"], u["reason"]] for u in report.replica_unavailable])
    if not cells:
        return [missing] if missing.rows else []
    header, rows = replica_table.matrix(cells, compact=not full)
    sizes = ", ".join(map(str, sorted({c.world_size for c in cells})))
    note = _MATRIX_NOTE if full else _MATRIX_NOTE + f" Each entry over world sizes {sizes} (where the split exists)."
    out = [Section("Distributed: each backend across replicas, per world size (W) and split", header, rows,
                   note=note, terminal_columns=None)]
    legend = replica_table.legend_rows(cells, compact=not full)
    if legend:
        out.append(Section("Distributed: the marks in the matrix", replica_table.LEGEND_HEADER, legend))
    if missing.rows:
        out.append(missing)
    records = replica_table.discrepancy_rows(cells) if full else []  # Markdown: the ids in the marks
    if records:
        k = None if full else 5
        out.append(Section("Distributed: known discrepancies", replica_table.DISCREPANCY_HEADER[:k],
                           [r[:k] for r in records], terminal_columns=6,
                           note=_RECORDS_NOTE if full else "Explanation and evidence of each: the HTML."))
    pairs = report.replica_pairs
    if full:
        out.append(Section("Distributed: every quantity", replica_table.QUANTITY_HEADER,
                           replica_table.quantity_rows(cells), note=_QUANTITIES_NOTE, terminal_columns=12,
                           filter_columns=replica_table.QUANTITY_FILTER, element_id="replicas"))
        if pairs:
            out.append(Section(_PAIRS_TITLE, replica_table.PAIR_HEADER, replica_table.pair_setting_rows(pairs),
                               note=_PAIRS_NOTE, terminal_columns=10))
        return out
    failing = replica_table.failing_rows(cells)
    if failing:
        shown = [replica_table.QUANTITY_HEADER.index(h) for h in _MARKDOWN_QUANTITY_COLUMNS]
        more = len(failing) - MARKDOWN_REPLICA_ROWS
        out.append(Section(f"Distributed: quantities that do not conform ({len(failing)})",
                           list(_MARKDOWN_QUANTITY_COLUMNS),
                           [[row[k] for k in shown] for row in failing[:MARKDOWN_REPLICA_ROWS]],
                           note="Observed, expected, replay: in the findings"
                                + (f"; {more} more rows in {report.name}.html." if more > 0 else ".")))
    rows = replica_table.pair_rows(pairs, compact=True)
    if rows:
        tally = {v: sum(r[2] == v for r in rows) for v in replica_table.PAIR_VERDICTS}
        wrong = [r for r in rows if r[2] in replica_table.PAIR_VERDICTS[:2]]  # UNEXPECTED or error
        out.append(Section(_PAIRS_TITLE, replica_table.PAIR_COMPACT_HEADER, wrong,
                           note=f"{len(rows)} pairs: " + ", ".join(f"{n} {v}" for v, n in tally.items())
                                + f" (quantity rows counted per pair over its world sizes and splits; the pairs that "
                                  f"are not UNEXPECTED or in error, every setting and what differs and why: "
                                  f"{report.name}.html)."))
    return out


def _merged_sections(report: Report) -> list[Section]:
    """A merged report's (bnconf merge) environments, backend x environment matrix and pairs per environment pair."""
    if not report.environments:
        return []
    from . import merge_table

    return merge_table.sections(report)


def sections(report: Report, distributed: bool = True) -> list[Section]:
    """The full tables, in the order the terminal and the HTML show them after the summary (the distributed
    part's after the conformance table, unless `distributed` is False)."""
    out = _merged_sections(report)
    out += [Section("Conformance to each backend's declared convention", CELL_HEADER, _cell_rows(report.results),
                   note="One row per backend, device, dtype, mode and quantity: its worst case. Examples: those with "
                        "a judged element / those drawn. Observed / expected and the relative error are at the worst "
                        f"element of the case shown; {NO_FIGURE}: no meaningful figure.",
                   terminal_columns=10, filter_columns=(0, 9), element_id="conformance")]
    out += _distributed_sections(report, full=True) if distributed else []
    if report.inferred:
        out.append(_inferred_section(report))
    if report.edge:
        out.append(_edge_matrix_section(report))
        header, rows = edge_section_rows(report.edge, grouped=True)
        counts = edge_summary(report.edge)
        out.append(Section("Edge-case behaviour: what each backend does", header, rows,
                           note=f"spec/edge_cases.py (SPEC.md section 5) states each case's outcome, a value or 'must "
                                f"raise'; {counts['agree']} of {counts['outcomes']} outcomes agree, {counts['recorded']} "
                                f"differ as recorded (conformance/known/edge.py), {counts['unexplained']} unexplained.",
                           terminal_columns=None))
        recorded = edge_record_rows(report.edge)
        if recorded:
            out.append(Section("Recorded edge behaviours", EDGE_RECORD_HEADER, recorded,
                               note=_EDGE_RECORDS_NOTE + " With their explanation and evidence.", terminal_columns=5))
    if report.discrepancies:
        out.append(Section("Known discrepancies", DISCREPANCY_HEADER, discrepancy_rows(report.discrepancies),
                           note=_DISCREPANCIES_NOTE + " With their explanation and evidence.", terminal_columns=6))
    if report.pairs:
        out.append(Section(
            "Frameworks against each other after translating parameters",
            ["backend A", "backend B", "mode", "quantity", "verdict", "max relative difference", "why / worst input"],
            _pair_rows(report.pairs),
            note="Inputs drawn in A's convention; momentum, eps and the channel axis translated to B's with "
                 "bnconf.spec.translate; float64 where both support it.",
            terminal_columns=6))
    conditioning = _conditioning_rows(report.results)
    if conditioning:
        out.append(Section(
            "Accuracy against conditioning (float32 training forward)",
            ["backend", "device", "quantity", "|mean|/std < 10", "10 - 1e2", "1e2 - 1e3", "1e3 - 1e4", ">= 1e4"],
            conditioning,
            note="Worst normwise error max|observed - oracle| / max|oracle| per decade of the case's largest "
                 "|mean|/std. A stable variance keeps it near the unit roundoff (6e-8); E[x^2] - E[x]^2 grows "
                 "with (|mean|/std)^2 until the variance is lost."))
    out.append(Section("Time per backend (seconds)", ["backend", "seconds"],
                       [[k, v] for k, v in seconds_per_backend(report.results, report.replica_cells).items()]))
    return out


# ---------------------------------------------------------------- the summary, in every format

SUMMARY_HEADER = ["backend", "cells run / selected", "examples judged / drawn", "conform", "known", "ill-conditioned",
                  "NON-CONFORMANT", "errors", "edge cases agree / recorded / DIFFERS", "worst error / bound", "time (s)",
                  "verdict"]
FINDING_HEADER = ["backend", "where", "quantity", "verdict", "diagnosis", "observed / expected", "relative error",
                  "error / bound", "examples judged / drawn", "replay"]
SUMMARY_NOTE = ("Cells run / selected (the rest unsupported); rows per verdict over every quantity; errors: cells "
                "that raised, crashed, timed out or ran out of memory; worst error / bound over rows no record covers.")


def _summary_row(line: BackendLine) -> list:
    return [line.backend, f"{line.cells}/{line.cells + line.unsupported}",
            examples_text(line.judged, line.drawn), line.conforms, line.known, line.ill_conditioned, line.non_conformant,
            line.errors, "/".join(map(str, line.edge)) if any(line.edge) else "-", number(line.worst_ratio),
            f"{line.seconds:.1f}", line.verdict]


def summary_section(report: Report) -> Section:
    """One line per backend."""
    return Section("Summary", SUMMARY_HEADER, [_summary_row(line) for line in backend_lines(report)], note=SUMMARY_NOTE)


def _finding_row(f: Finding) -> list:
    shown = f.observed is not None or f.expected is not None
    return [f.backend, f.where, f.subject, f.verdict, f.diagnosis,
            f"{number(f.observed, 6)} / {number(f.expected, 6)}" if shown else "",
            number(f.relative_error) if f.relative_error is not None else "", number(f.ratio) if f.ratio is not None else "",
            examples_text(f.judged, f.drawn) if f.drawn is not None else "", f.replay]


def findings_section(report: Report) -> Section:
    """Every finding: what failed, its diagnosis, what was seen at the worst element, how to replay it."""
    return Section("Findings", FINDING_HEADER, [_finding_row(f) for f in findings(report)],
                   note="Each reason the run does not conform: NON-CONFORMANT rows, cells that did not finish, edge "
                        "cases and convention properties nobody has explained, unexpected cross-framework differences.",
                   terminal_columns=None)


def finding_text(f: Finding) -> str:
    """A finding on one line: where, verdict, diagnosis, what was seen, how many examples, the replay command."""
    seen = []
    if f.observed is not None or f.expected is not None:
        seen.append(f"observed {number(f.observed, 6)}, expected {number(f.expected, 6)}"
                    + (f" (relative error {number(f.relative_error)})" if f.relative_error is not None else ""))
    elif f.relative_error is not None:
        seen.append(f"relative difference {number(f.relative_error)}")
    if f.ratio is not None:
        seen.append(f"error/bound {number(f.ratio)}")
    if f.drawn is not None:
        seen.append(f"{examples_text(f.judged, f.drawn)} examples judged")
    subject = "" if f.subject == "-" else f" {f.subject}"
    text = f"{f.backend} {f.where}{subject}: {f.verdict}" + (f" \u2014 {f.diagnosis}" if f.diagnosis else "")
    text += (". " + "; ".join(seen) if seen else "")
    return text + (f". Replay: {f.replay}" if f.replay else "")


def _distributed_text(report: Report) -> str:
    """The distributed part's cells per outcome, for the totals line ("" when the run has none)."""
    if not report.replica_cells:
        return ""
    n = replica_table.counts(report.replica_cells)
    return (f" Distributed: {n['ran']} of {n['selected']} cells ran ({n['not_run']} unsupported or skipped): "
            f"{n['conform']} conform, {n['known']} known discrepancy, {n['non_conformant']} NON-CONFORMANT, "
            f"{n['failed']} crashed, timed out or raised.")


def _totals_text(report: Report) -> str:
    t = totals(backend_lines(report))
    n = len(findings(report))
    judged = NO_FIGURE if t.judged is None else t.judged
    return (f"{t.backend}: {t.cells} cells ran ({t.unsupported} unsupported), {judged} of {t.drawn} examples judged; "
            f"rows: {t.conforms} conform, {t.known} known discrepancy, {t.ill_conditioned} ill-conditioned, "
            f"{t.non_conformant} NON-CONFORMANT; {t.errors} cell error(s); edge cases {t.edge[0]} agree, "
            f"{t.edge[1]} recorded, {t.edge[2]} DIFFER; worst error/bound {number(t.worst_ratio)}; "
            f"{n} finding(s).") + _distributed_text(report)


def conforms(report: Report) -> bool:
    """The run's verdict: the report's own (conformance/run.py's failures) and the distributed part's."""
    return (report.conforms and not replica_table.failures(report.replica_cells)
            and not replica_pair_findings(report.replica_pairs))


def _headline(report: Report) -> str:
    verdict = "everything conforms or is a recorded discrepancy" if conforms(report) else "NON-CONFORMANT quantities found"
    if report.status == "complete":
        return verdict
    return f"PARTIAL report ({report.status}: {len(report.results)} of {report.cells_planned} cells): {verdict} so far"


# ---------------------------------------------------------------- terminal


def _terminal_section(s: Section) -> str:
    k = s.terminal_columns or len(s.header)
    return f"{s.title}\n\n" + table(s.header[:k], [row[:k] for row in s.rows])


def terminal(report: Report) -> str:
    """The summary, the findings one per line (with their replay command), then the tables: in full for a
    small run (at most TERMINAL_FULL_ROWS table rows), else the Markdown's short per-backend tables and where
    the full ones are (the summary must not scroll away behind 1,900 rows); then the distributed part's
    matrix, its marks and the quantities that do not conform (as in the Markdown)."""
    summary = summary_section(report)
    parts = [f"{TITLE}: {_headline(report)}\n{_totals_text(report)}", _terminal_section(summary)]
    found = findings(report)
    if found:
        parts.append(f"Findings ({len(found)})\n\n" + "\n".join(one_line(f"- {finding_text(f)}") for f in found))
    full = sections(report, distributed=False)
    if sum(len(s.rows) for s in full) <= TERMINAL_FULL_ROWS:
        parts += [_terminal_section(s) for s in full]
    else:
        parts += [_terminal_section(s) for s in markdown_sections(report) if not s.title.startswith("Distributed")]
        parts.append("The full tables (every backend, dtype, mode and quantity) are in the HTML and JSON report.")
    parts += [_terminal_section(s) for s in _distributed_sections(report, full=False)]
    return "\n\n".join(parts)


TERMINAL_FULL_ROWS = 200


# ---------------------------------------------------------------- Markdown


def _environment(report: Report) -> str:
    return ", ".join(f"{k} {v}" for k, v in report.environment.items())


def markdown_cell(value) -> str:
    """Any text (a backend's name, an error message, a version) as inert Markdown on one line, safe in a table
    cell. `terminal.one_line` first (line breaks become a space: no row split, no injected heading; other
    control characters show as escapes); `<`, `>` and `&` become HTML entities (no raw HTML such as <script>);
    backslashes, `|` and backticks are backslash-escaped (no cell split, no code span); a leading `#` and `](`
    (an inline link or image) are neutralised. It renders as the original text. Used for every cell."""
    text = html.escape(one_line(value), quote=False).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return re.sub(r"^(\s*)#", r"\1\\#", text.replace("](", "\\]("))


def _markdown_row(values) -> str:
    return "| " + " | ".join(markdown_cell(v) for v in values) + " |"


def _pair_counts_rows(pairs) -> list[list]:
    """Per backend, over the pairs it is in: pairs compared, and its quantities per pair verdict."""
    counts: dict[str, list[int]] = {}
    for p in pairs:
        for name in (p.source, p.target):
            row = counts.setdefault(name, [0, 0, 0, 0, 0])
            if p.status != "ran":
                row[4] += p.status == "error"
                continue
            row[0] += 1
            for r in p.rows or []:
                row[1 if r.verdict.startswith("matches") else 3 if r.verdict == UNEXPECTED_PAIR else 2] += 1
    return [[name, *row] for name, row in counts.items()]


def markdown_sections(report: Report) -> list[Section]:
    """The Markdown's short tables, one row per backend or per record (the full ones are in the HTML and JSON)."""
    out = _merged_sections(report) + _distributed_sections(report, full=False)
    if report.inferred:
        out.append(_inferred_section(report))
    if report.edge:
        out.append(_edge_matrix_section(report))
        recorded = edge_record_rows(report.edge)
        if recorded:
            out.append(Section("Recorded edge behaviours", EDGE_RECORD_HEADER[:5], [r[:5] for r in recorded],
                               note=_EDGE_RECORDS_NOTE))
    if report.discrepancies:
        rows = [r[:6] for r in discrepancy_rows(report.discrepancies)]
        reached = [r for r in rows if r[1:5] and not str(r[4]).startswith("not reached")]
        apart = len(rows) - len(reached)
        out.append(Section("Known discrepancies", DISCREPANCY_HEADER[:6], reached,
                           note=_DISCREPANCIES_NOTE + (f" {apart} more record(s) no case of this run reached: "
                                                       f"{report.name}.html." if apart else "")))
    if report.pairs:
        out.append(Section("Frameworks against each other after translating parameters",
                           ["backend", "pairs compared", "quantities matching after translation",
                            "differing as the spec predicts", "UNEXPECTED differences", "pairs that raised"],
                           _pair_counts_rows(report.pairs),
                           note="Per backend, over every pair it is in (inputs translated with bnconf.spec.translate)."))
    return out


def _markdown_table(s: Section) -> list[str]:
    """The section's title, note and table (no table when it has no rows and the note says why)."""
    lines = ["", f"## {markdown_cell(s.title)}", ""] + ([markdown_cell(s.note), ""] if s.note else [])
    if not s.rows and s.note:
        return lines
    return lines + [_markdown_row(s.header), "|" + "---|" * len(s.header)] + [_markdown_row(row) for row in s.rows]


def _markdown_findings(report: Report) -> list[str]:
    found = findings(report)
    lines = ["", f"## Findings ({len(found)})", ""]
    if not found:
        return lines + [NO_FINDINGS]
    lines += [f"- {markdown_cell(finding_text(f))}" for f in found[:MARKDOWN_FINDINGS]]
    if len(found) > MARKDOWN_FINDINGS:
        name = markdown_cell(report.name)
        lines.append(f"- ... and {len(found) - MARKDOWN_FINDINGS} more: every finding is in {name}.html and {name}.json")
    return lines


def _where_the_rest_is(report: Report) -> list[str]:
    html_name, json_name = (urllib.parse.quote(f"{report.name}.{ext}") for ext in ("html", "json"))
    rows = len(_cell_rows(report.results))
    distributed = (f", every quantity of the distributed part ({len(replica_table.quantity_rows(report.replica_cells))} "
                   "rows) and every pair of synchronized backends" if report.replica_cells else "")
    return ["", "## Full tables", "",
            f"Every quantity of every cell ({rows} rows, with observed and expected values, the worst input and the "
            f"replay line){distributed}, every edge-case outcome, cross-framework pair, accuracy against conditioning, and each "
            f"record's explanation and evidence: [{markdown_cell(report.name)}.html]({html_name}) (filterable by "
            f"backend, verdict and text; sortable) and [{markdown_cell(report.name)}.json]({json_name}) (everything, "
            "layout in reports/render.py)."]


def markdown(report: Report) -> str:
    """The report to read in a minute: verdict, summary, findings, short per-backend tables, where the rest is."""
    summary = summary_section(report)
    lines = [f"# {TITLE}", "",
             f"Verdict: **{_headline(report)}**. Seed {report.seed}, {report.examples} Hypothesis examples per cell "
             "(shrinking off, targeting the largest error/bound)."
             + (f" Shard {report.shard} of the cells (bnconf report --shard)." if report.shard else ""), "",
             markdown_cell(_totals_text(report)), "",
             f"Environment: {markdown_cell(_environment(report))}"]
    lines += _markdown_table(summary) + _markdown_findings(report)
    if report.figures:
        lines += ["", "## Figures", ""] + [f"- [{markdown_cell(title)}]({urllib.parse.quote(name)})"
                                           for name, (title, _) in report.figures.items()]
    for s in markdown_sections(report):
        lines += _markdown_table(s)
    return "\n".join(lines + _where_the_rest_is(report)) + "\n"


# ---------------------------------------------------------------- HTML


def _bad(row) -> bool:
    return any(str(v).startswith(("NON", "ERROR", "UNEXPECTED", "STALE", "CRASHED", "TIMED OUT", "OUT OF MEMORY",
                                  "NOT RUN", "DIFFERS", "probing failed")) or v == "NO" for v in row)


def _html_section(s: Section) -> str:
    """A table with its title and note; the filter bar where the section names its backend and verdict columns."""
    note = f'<p class="note">{page.esc(s.note)}</p>' if s.note else ""
    bar = ""
    backend_column = verdict_column = None
    if s.filter_columns:
        backend_column, verdict_column = s.filter_columns
        present = {page.verdict_class(row[verdict_column]) for row in s.rows}
        prefix = "" if s.element_id == "conformance" else f"{s.element_id}-"
        bar = page.filters(list(dict.fromkeys(row[backend_column] for row in s.rows)),
                           [v for v in page.VERDICT_CLASSES if v in present], s.element_id, prefix)
    body = page.table(s.header, s.rows, verdict_column, backend_column, s.element_id, bool(s.filter_columns),
                      row_class=lambda row: "bad" if _bad(row) else "")
    return f"<section><h2>{page.esc(s.title)}</h2>{note}\n{bar}{body}</section>"


def _html_summary(report: Report) -> str:
    """What opens the page: title, verdict, totals, one line per backend."""
    summary = summary_section(report)
    verdict = _headline(report)
    return (f'<section id="summary"><h1>{TITLE}</h1>'
            f'<p><b class="verdict">{page.esc(verdict[0].upper() + verdict[1:])}</b>. Seed {report.seed}, '
            f"{report.examples} examples per cell. {page.esc(_totals_text(report))}</p>"
            f"{page.table(summary.header, summary.rows, len(summary.header) - 1, 0, 'backends')}"
            f'<p class="note">{page.esc(summary.note)}</p></section>')


def html_page(report: Report) -> str:
    """The summary, the findings, the figures, every table in full, the environment: one self-contained page."""
    found = findings_section(report)
    body = [_html_section(found) if found.rows else f"<h2>Findings</h2><p>{NO_FINDINGS}</p>",
            page.figures(report.figures)]
    body += [_html_section(s) for s in sections(report)]
    body.append(f'<p class="note">Environment: {page.esc(_environment(report))}</p>')
    return page.document(TITLE, _html_summary(report), "\n".join(body))


# ---------------------------------------------------------------- JSON


def _summary_document(report: Report) -> dict:
    """The summary for readers of the JSON (timings are in seconds_per_backend only: the rest depends on the seed)."""
    backends = [dict(asdict(line), verdict=line.verdict) for line in backend_lines(report)]
    return {"backends": [{k: v for k, v in b.items() if k != "seconds"} for b in backends],
            "findings": [asdict(f) for f in findings(report)]}


def json_document(report: Report) -> str:
    doc = {
        "format": FORMAT,
        "status": report.status,
        "cells_planned": report.cells_planned,
        "seed": report.seed,
        "examples": report.examples,
        "shard": report.shard,
        "conforms": conforms(report),
        "environment": report.environment,
        "cells": [asdict(c) for c in report.results],
        "discrepancies": [dict(asdict(d), status=d.status) for d in report.discrepancies],
        "pairs": [asdict(p) for p in report.pairs],
        "inferred": report.inferred,
        "edge": report.edge,
        "edge_records": [dict(zip(EDGE_RECORD_HEADER, row)) for row in edge_record_rows(report.edge)],
        "replicas": [asdict(c) for c in report.replica_cells],
        "replicas_unavailable": report.replica_unavailable,
        "replica_pairs": [asdict(p) for p in report.replica_pairs],
        "seconds_per_backend": seconds_per_backend(report.results, report.replica_cells),
        "summary": _summary_document(report),
        "spec": spec_identity(),
        "pair_outputs": report.pair_outputs,
    }
    if report.environments:
        doc["environments"] = report.environments
    return json.dumps(_finite(doc), indent=1, sort_keys=True, default=str, allow_nan=False)


def _finite(value):
    """Strict JSON (RFC 8259) has no NaN or Infinity: a non-finite number is written as the string
    "nan", "inf" or "-inf"."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
