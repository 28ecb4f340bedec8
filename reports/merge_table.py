"""A merged report's own tables (reports/merge.py): the environments, the matrix backend x environment, and the
cross-framework pairs counted per pair of environments. Every format shows them first, before the other tables,
which list every backend as "<backend> @ <environment>"."""

from .merge import split_label
from .render import Section

MISSING = "\u2014"
FRAMEWORK_SKIP = ("python", "numpy", "machine", "host")

ENVIRONMENTS_NOTE = ("One environment per report merged, labelled by PATH=LABEL or by its path; every other table names "
                     "each backend \"<backend> @ <environment>\". Status: a partial report (running, interrupted) brings "
                     "every result it had finished.")
MATRIX_NOTE = (f"Each backend's verdict in each environment (its summary line there); {MISSING}: the backend did not run "
               "there (not installed, not selected, or another shard).")
PAIRS_NOTE = ("Quantity rows of the cross-framework pairs, per pair of environments: within one environment the pairs "
              "its own run compared; across two, each representative (one backend per convention) of one against "
              "each of the other's, the same backend included, on the canonical pair inputs both runs saved "
              "(conformance/pair_outputs.py), judged as within one run. Not comparable: no common dtype, rank or mode, "
              "or inputs drawn differently (another Hypothesis or NumPy version).")


def _frameworks(versions: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items() if k not in FRAMEWORK_SKIP) or "none"


def environment_rows(environments: list[dict]) -> list[list]:
    out = []
    for e in environments:
        verdict = "conforms" if e.get("conforms") else "NON-CONFORMANT"
        status = e.get("status", "complete")
        out.append([e["label"], e.get("file", ""), status if status == "complete" else status.upper(), verdict,
                    len(e.get("backends", {})), f"{e.get('cells', 0)}/{e.get('cells_planned', 0)}",
                    ", ".join(e.get("devices", [])) or MISSING, _frameworks(e.get("versions", {})),
                    e.get("versions", {}).get("python", ""), e.get("machine", ""), e.get("host", "") or MISSING,
                    len(e.get("paired", [])) or "none saved"])
    return out


ENVIRONMENT_HEADER = ["environment", "report", "status", "verdict", "backends", "cells run / planned", "devices",
                      "frameworks", "python", "machine", "host", "backends paired across"]


def matrix(environments: list[dict]) -> tuple[list[str], list[list]]:
    """backend x environment: the backend's verdict there."""
    labels = [e["label"] for e in environments]
    names = list(dict.fromkeys(n for e in environments for n in e.get("backends", {})))
    rows = [[n] + [e.get("backends", {}).get(n, MISSING) for e in environments] for n in names]
    return ["backend"] + labels, rows


PAIR_HEADER = ["environments", "pairs compared", "quantities matching after translation", "differing as the spec predicts",
               "UNEXPECTED differences", "pairs that raised", "not comparable"]


def pair_rows(pairs, environments: list[dict]) -> list[list]:
    """Per pair of environments (one environment alone: its own table), the pairs' quantity rows per verdict."""
    order = {e["label"]: k for k, e in enumerate(environments)}
    counts: dict[tuple, list[int]] = {}
    for p in pairs:
        ends = sorted({split_label(p.source)[1], split_label(p.target)[1]}, key=lambda label: order.get(label, 0))
        row = counts.setdefault(tuple(ends), [0] * 6)
        if p.status == "not comparable":
            row[5] += 1
        elif p.status == "error":
            row[4] += 1
        else:
            row[0] += 1
            for r in p.rows or []:
                row[1 if r.verdict.startswith("matches") else 3 if r.verdict.startswith("UNEXPECTED") else 2] += 1
    key = lambda ends: (len(ends), [order.get(label, 0) for label in ends])  # noqa: E731
    return [[" \u00d7 ".join(ends), *counts[ends]] for ends in sorted(counts, key=key)]


def sections(report) -> list[Section]:
    """The merged report's tables (none for a report of one run)."""
    envs = report.environments
    if not envs:
        return []
    header, rows = matrix(envs)
    return [Section("Environments", ENVIRONMENT_HEADER, environment_rows(envs), note=ENVIRONMENTS_NOTE, terminal_columns=6),
            Section("Backends per environment", header, rows, note=MATRIX_NOTE),
            Section("Frameworks against each other, per pair of environments", PAIR_HEADER,
                    pair_rows(report.pairs, envs), note=PAIRS_NOTE)]
