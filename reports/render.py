"""Rendering a battery's results: terminal table, Markdown, HTML and JSON.

JSON layout (`bnconf-report/1`):
    {"format": "bnconf-report/1", "seed": int, "examples": int, "conforms": bool,
     "environment": {"python": str, "numpy": str, "<framework>": str, "machine": str},
     "cells": [{"backend", "convention", "device", "dtype", "mode", "status": "ran"|"unsupported"|"error",
                "reason", "seconds",
                "rows": [{"quantity", "verdict", "max_error", "max_ratio", "max_ulp", "detail",
                          "worst_input", "discrepancy", "examples", "failures"}]}],
     "seconds_per_backend": {"<backend>": float}}
`max_ratio` is the largest error in units of the error model's bound; `max_ulp` the error in ULPs of the
quantity's format. Timestamps are deliberately absent: the same seed gives the same file but for timings.
"""

import html
import json
from collections import defaultdict
from dataclasses import asdict

from .terminal import table

HEADER = ["backend", "device", "dtype", "mode", "quantity", "max error", "error/bound", "ulps", "verdict", "worst input"]


def _rows(results) -> list[list]:
    """One row per (backend, device, dtype, mode, quantity); unsupported cells folded to one row per
    backend and device."""
    out, folded = [], set()
    for c in results:
        if c.status == "unsupported":
            if (c.backend, c.device, c.reason) not in folded:
                folded.add((c.backend, c.device, c.reason))
                out.append([c.backend, c.device, "*", "*", "-", "", "", "", "unsupported", c.reason])
            continue
        if c.status == "error":
            out.append([c.backend, c.device, c.dtype, c.mode, "-", "", "", "", "ERROR", c.reason])
        for r in c.rows:
            verdict = r.verdict + (f" [{r.discrepancy}]" if r.discrepancy else "") + (f": {r.detail}" if r.detail else "")
            out.append([c.backend, c.device, c.dtype, c.mode, r.quantity, f"{r.max_error:.3g}", f"{r.max_ratio:.3g}",
                        f"{r.max_ulp:.3g}", verdict, r.worst_input])
    return out


def seconds_per_backend(results) -> dict[str, float]:
    totals = defaultdict(float)
    for c in results:
        totals[c.backend] += c.seconds
    return {k: round(v, 2) for k, v in sorted(totals.items())}


def terminal(results) -> str:
    ran = [r[:9] for r in _rows(results)]  # the worst input is in the files, too wide for a terminal
    timing = table(["backend", "seconds"], [[k, v] for k, v in seconds_per_backend(results).items()])
    return table(HEADER[:9], ran) + "\n\n" + timing


def markdown(results, environment: dict, seed: int, examples: int, conforms: bool) -> str:
    lines = [
        "# bnconf discrepancy report",
        "",
        f"Verdict: **{'everything conforms or is a recorded discrepancy' if conforms else 'NON-CONFORMANT quantities found'}**. "
        f"Seed {seed}, {examples} Hypothesis examples per cell (shrinking off, targeting the largest error/bound).",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in environment.items()),
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in _rows(results)]
    lines += ["", "## Time per backend", "", "| backend | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in seconds_per_backend(results).items()]
    return "\n".join(lines) + "\n"


def html_page(results, environment: dict, seed: int, examples: int, conforms: bool) -> str:
    def cells(row, tag="td"):
        return "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in row)

    body = "\n".join(
        f"<tr class=\"{'bad' if 'NON' in row[8] or 'ERROR' in row[8] else ''}\">{cells(row)}</tr>" for row in _rows(results)
    )
    timing = "\n".join(f"<tr>{cells([k, v])}</tr>" for k, v in seconds_per_backend(results).items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bnconf discrepancy report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}tr.bad td{{background:#fdd}}th{{background:#eee}}</style></head>
<body><h1>bnconf discrepancy report</h1>
<p><b>{'Everything conforms or is a recorded discrepancy' if conforms else 'NON-CONFORMANT quantities found'}</b>.
Seed {seed}, {examples} examples per cell.</p>
<p>Environment: {html.escape(", ".join(f"{k} {v}" for k, v in environment.items()))}</p>
<table><tr>{cells(HEADER, "th")}</tr>
{body}
</table>
<h2>Time per backend</h2><table><tr><th>backend</th><th>seconds</th></tr>
{timing}
</table></body></html>
"""


def json_document(results, environment: dict, seed: int, examples: int, conforms: bool) -> str:
    doc = {
        "format": "bnconf-report/1",
        "seed": seed,
        "examples": examples,
        "conforms": conforms,
        "environment": environment,
        "cells": [asdict(c) for c in results],
        "seconds_per_backend": seconds_per_backend(results),
    }
    return json.dumps(doc, indent=1, sort_keys=True, default=str)
