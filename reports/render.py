"""Rendering a run: terminal tables, Markdown, HTML and JSON, all from the same `Report`.

A report is a list of sections (title, header, rows), built once by `sections`; each format renders them.

JSON layout (`bnconf-report/1`):
    {"format": "bnconf-report/1", "status": "complete"|"running"|"interrupted", "cells_planned": int,
     "seed": int, "examples": int, "conforms": bool,
     "environment": {"python": str, "numpy": str, "<framework>": str, "machine": str},
     "cells": [{"backend", "convention", "device", "dtype", "mode",
                "status": "ran"|"unsupported"|"error"|"crashed"|"timed out"|"out of memory"|"not run",
                "reason", "seconds", "discrepancies": {"<id>": [covered, needed]},
                "points": [[max |mean|/std, values per channel, quantity, normwise error, error/bound], ...],
                "rows": [{"quantity", "verdict": "conforms"|"known discrepancy"|"ill-conditioned"|"NON-CONFORMANT",
                          "failure" (the spec's verdict of a NON-CONFORMANT row's worst case), "max_error",
                          "max_ratio", "max_ulp", "detail", "worst_input", "discrepancy", "examples", "failures",
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
     "seconds_per_backend": {"<backend>": float}}
Non-finite numbers are the strings "nan", "inf", "-inf" (strict JSON has none).
`max_ratio` is the largest error in units of the error model's bound; `max_ulp` the error in ULPs of the
quantity's format; a discrepancy entry is "in use" when some case needed it, "STALE" when it covered cases
and none needed it. Pair verdicts: "matches after translation", "differs as the spec predicts", "UNEXPECTED
difference". Timestamps are deliberately absent: the same seed gives the same file but for timings.
The JSON file is rewritten (atomically) as cells arrive while the run goes on ("status": "running"; a large
report skips rewrites that would take over a tenth of the run's time, so it is at most about a second
behind), so a run killed or interrupted leaves a valid partial report; Ctrl-C writes every format with
"interrupted".
"""

import base64
import html
import json
import re
import urllib.parse
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from .edge_table import EDGE_RECORD_HEADER, edge_matrix_rows, edge_record_rows, edge_section_rows, edge_summary
from ..conformance.status import CellStatus
from .terminal import one_line, table

FORMAT = "bnconf-report/1"
CELL_HEADER = ["backend", "device", "dtype", "mode", "quantity", "max error", "error/bound", "ulps", "verdict", "worst input",
               "replay"]


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


@dataclass
class Section:
    title: str
    header: list[str]
    rows: list[list]
    note: str = ""
    terminal_columns: int | None = None  # the terminal shows only the first columns (the rest is too wide)


_REPLAY_IN_REASON = re.compile(r"; replay: (bnconf replay .*?)(?=; |$)")


def _reason_replays(reason: str) -> tuple[str, list[str]]:
    """A crashed or ERROR cell's reason without its "; replay: <command>" parts, and those commands."""
    return _REPLAY_IN_REASON.sub("", reason), _REPLAY_IN_REASON.findall(reason)


def _cell_rows(results) -> list[list]:
    """One row per (backend, device, dtype, mode, quantity); unsupported cells folded per backend and device."""
    out, folded = [], set()
    for c in results:
        if c.status is CellStatus.UNSUPPORTED:
            if (c.backend, c.device, c.reason) not in folded:
                folded.add((c.backend, c.device, c.reason))
                out.append([c.backend, c.device, "*", "*", "-", "", "", "", "unsupported", c.reason, ""])
            continue
        if not c.status.acceptable:  # raised, crashed, timed out, out of memory, not run
            reason, replays = _reason_replays(c.reason)
            out.append([c.backend, c.device, c.dtype, c.mode, "-", "", "", "", c.status.value.upper(), reason,
                        "; ".join(replays)])
        for r in c.rows:
            verdict = r.verdict_text + (f" [{r.discrepancy}]" if r.discrepancy else "") + (f": {r.detail}" if r.detail else "")
            out.append([c.backend, c.device, c.dtype, c.mode, r.quantity, f"{r.max_error:.3g}", f"{r.max_ratio:.3g}",
                        f"{r.max_ulp:.3g}", verdict, r.worst_input, getattr(r, "replay", "")])
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


def seconds_per_backend(results) -> dict[str, float]:
    totals = defaultdict(float)
    for c in results:
        totals[c.backend] += c.seconds
    return {k: round(v, 2) for k, v in sorted(totals.items())}


def sections(report: Report) -> list[Section]:
    out = [Section("Conformance to each backend's declared convention", CELL_HEADER, _cell_rows(report.results),
                   terminal_columns=9)]
    if report.inferred:
        out.append(Section("Convention inferred by probing, against the declared record",
                           ["backend", "property", "inferred", "against the declared record", "evidence", "replay"],
                           [[r["backend"], r["property"], r["value"], r.get("verdict", "agrees" if r["agrees"] else "DIFFERS"),
                             r["evidence"] + (f" (probed in {r['dtype']})" if r.get("dtype") else ""), r.get("replay", "")]
                            for r in report.inferred],
                           note="Designed inputs (conformance/inference_probes.py). \"differs as recorded\": a known "
                                "discrepancy covers a probe that decided the property; DIFFERS: nobody has explained "
                                "it. Each property's candidate hypotheses and their residuals are in the JSON.",
                           terminal_columns=4))
    if report.edge:
        out.append(Section("Edge-case behaviour per backend", *edge_matrix_rows(report.edge),
                           note="Per backend and edge case over its modes and dtypes: agrees with the spec (SPEC.md "
                                "section 5), recorded (what it does instead is explained in conformance/known/edge.py; "
                                "the next table says what), DIFFERS (unexplained) or - (not run)."))
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
                               note="Each record that covered an outcome of the run, with its explanation and evidence. "
                                    "Source: built-in (conformance/known/edge.py), backend (the backend's own "
                                    "edge_records), or the records file named with --records. STALE: it covered "
                                    "outcomes and explained none (the backend changed: update the record).",
                               terminal_columns=5))
    if report.discrepancies:
        out.append(Section("Known discrepancies", DISCREPANCY_HEADER, discrepancy_rows(report.discrepancies),
                           note="Each record that applies to a backend of the run, with its explanation and evidence. "
                                "Source: built-in (conformance/known/), backend (the backend's own "
                                "known_discrepancies), or the records file named with --records. STALE: it covered "
                                "cases and none needed it (the backend changed: update the record).",
                           terminal_columns=6))
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
                       [[k, v] for k, v in seconds_per_backend(report.results).items()]))
    return out


def _headline(report: Report) -> str:
    verdict = "everything conforms or is a recorded discrepancy" if report.conforms else "NON-CONFORMANT quantities found"
    if report.status == "complete":
        return verdict
    return f"PARTIAL report ({report.status}: {len(report.results)} of {report.cells_planned} cells): {verdict} so far"


def replay_lines(report: Report) -> list[str]:
    """One line per finding saved for replay: what failed, then the command that reruns it."""
    out = []
    for c in report.results:
        where = f"{c.backend} {c.device} {c.dtype} {c.mode}"
        out += [f"{where} ({c.status.value}): {line}" for line in _reason_replays(c.reason)[1]]
        out += [f"{where} {r.quantity}: {r.replay}" for r in c.rows if getattr(r, "replay", "")]
    out += [f"{r['backend']} convention {r['property']}: {r['replay']}" for r in report.inferred if r.get("replay")]
    return out


def terminal(report: Report) -> str:
    parts = []
    for s in sections(report):
        k = s.terminal_columns or len(s.header)
        parts.append(f"{s.title}\n\n" + table(s.header[:k], [row[:k] for row in s.rows]))
    lines = replay_lines(report)
    if lines:
        parts.append("Replay each finding (bnconf replay reruns the saved case on the backend and the oracle)\n\n"
                     + "\n".join(one_line(line) for line in lines))
    return "\n\n".join(parts)


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


def markdown(report: Report) -> str:
    lines = ["# bnconf discrepancy report", "",
             f"Verdict: **{_headline(report)}**. Seed {report.seed}, {report.examples} Hypothesis examples per cell "
             "(shrinking off, targeting the largest error/bound).", "", f"Environment: {markdown_cell(_environment(report))}"]
    if report.figures:
        lines += ["", "## Figures", ""] + [f"- [{markdown_cell(title)}]({urllib.parse.quote(name)})"
                                           for name, (title, _) in report.figures.items()]
    for s in sections(report):
        lines += ["", f"## {markdown_cell(s.title)}", ""] + ([markdown_cell(s.note), ""] if s.note else [])
        lines += [_markdown_row(s.header), "|" + "---|" * len(s.header)]
        lines += [_markdown_row(row) for row in s.rows]
    return "\n".join(lines) + "\n"


def _bad(row) -> bool:
    return any(str(v).startswith(("NON", "ERROR", "UNEXPECTED", "STALE", "CRASHED", "TIMED OUT", "OUT OF MEMORY",
                                  "NOT RUN", "DIFFERS", "probing failed")) or v == "NO" for v in row)


def _figures_html(report: Report) -> str:
    """The figures embedded as data URIs, so that the HTML file stands alone."""
    return "\n".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for title, png in report.figures.values()
    )


def html_page(report: Report) -> str:
    def cells(row, tag="td"):
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row)

    body = []
    for s in sections(report):
        rows = "\n".join(f"<tr class=\"{'bad' if _bad(r) else ''}\">{cells(r)}</tr>" for r in s.rows)
        note = f"<p>{html.escape(s.note)}</p>" if s.note else ""
        body.append(f"<h2>{html.escape(s.title)}</h2>{note}\n<table><tr>{cells(s.header, 'th')}</tr>\n{rows}\n</table>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bnconf discrepancy report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}tr.bad td{{background:#fdd}}th{{background:#eee}}</style></head>
<body><h1>bnconf discrepancy report</h1>
<p><b>{html.escape(_headline(report)[0].upper() + _headline(report)[1:])}</b>. Seed {report.seed}, {report.examples} examples per cell.</p>
<p>Environment: {html.escape(_environment(report))}</p>
{_figures_html(report)}
{chr(10).join(body)}
</body></html>
"""


def json_document(report: Report) -> str:
    doc = {
        "format": FORMAT,
        "status": report.status,
        "cells_planned": report.cells_planned,
        "seed": report.seed,
        "examples": report.examples,
        "conforms": report.conforms,
        "environment": report.environment,
        "cells": [asdict(c) for c in report.results],
        "discrepancies": [dict(asdict(d), status=d.status) for d in report.discrepancies],
        "pairs": [asdict(p) for p in report.pairs],
        "inferred": report.inferred,
        "edge": report.edge,
        "edge_records": [dict(zip(EDGE_RECORD_HEADER, row)) for row in edge_record_rows(report.edge)],
        "seconds_per_backend": seconds_per_backend(report.results),
    }
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
