"""A `diff.Diff` as the terminal shows it (a summary line, notes, then one group per kind of change) and as
JSON for machines (`bnconf diff --json`, format `bnconf-diff/1`)."""

import json
from dataclasses import asdict

from .diff import FIXED, OTHER, RECORDS, REGRESSION, SECTIONS, VERSIONS, Diff
from .terminal import one_line

DIFF_FORMAT = "bnconf-diff/1"
SHOWN = 15  # changes listed per group in the terminal; --json lists them all
DETAIL = 240  # characters of a failure's detail shown in the terminal


def summary_line(d: Diff) -> str:
    """One line: the verdict and how many changes of each kind."""
    regressions = d.count(REGRESSION)
    verdict = f"REGRESSION: {regressions} newly failing" if regressions else "no regression"
    counts = [f"{d.count(FIXED)} fixed", f"{d.count(RECORDS)} record change(s)", f"{d.count(VERSIONS)} version change(s)",
              f"{d.count(OTHER)} other change(s)"]
    return f"bnconf diff {d.old_name} -> {d.new_name}: {verdict}; " + ", ".join(counts)


def _line(c) -> str:
    detail = f"  [{one_line(c.detail)[:DETAIL]}]" if c.detail else ""
    return f"  {one_line(c.where)}: {one_line(c.old)} -> {one_line(c.new)}{detail}"


def text(d: Diff) -> str:
    """The summary line, the notes, then each non-empty group (at most SHOWN lines each)."""
    lines = [summary_line(d)] + [f"note: {n}" for n in d.notes]
    for section in SECTIONS:
        found = d.of(section)
        if not found:
            continue
        hint = f": {section.hint}" if section.hint else ""
        lines += ["", f"{section.title} ({len(found)}){hint}"] + [_line(c) for c in found[:SHOWN]]
        if len(found) > SHOWN:
            lines.append(f"  ... and {len(found) - SHOWN} more (bnconf diff --json lists every change)")
    return "\n".join(lines)


def json_text(d: Diff) -> str:
    """Every change, for machines: {"format", "old", "new", "regression", "notes", "changes": [{"kind",
    "section", "where", "old", "new", "detail"}]}."""
    changes = [{"kind": c.section.kind, "section": c.section.title,
                **{k: v for k, v in asdict(c).items() if k != "section"}} for c in d.changes]
    return json.dumps({"format": DIFF_FORMAT, "old": d.old_name, "new": d.new_name, "regression": bool(d.regressions),
                       "notes": d.notes, "changes": changes}, indent=1)
