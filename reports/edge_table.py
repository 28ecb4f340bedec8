"""The report's "Edge-case behaviour" table: per backend and edge case, "agrees" or what it does instead.

Pure functions of the edge battery's outcomes (`conformance.edge.EdgeOutcome`, or the dicts `as_row` makes of
them, as a JSON report holds them); no backend is run here.
"""

from dataclasses import asdict, is_dataclass
from types import SimpleNamespace

from ..conformance.edge import AGREES


def _row(o) -> dict:
    return asdict(o) if is_dataclass(o) else dict(o)


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def edge_cell(outcomes: list[dict]) -> tuple[str, str]:
    """(what the backend does on one case over its modes, the recorded ids of its disagreements).

    "agrees" when every mode returns the spec's values; "agrees (raises …)" when it refuses where the spec
    allows that; otherwise each disagreeing mode and what it does instead."""
    wrong = [o for o in outcomes if not o["agrees"]]
    recorded = ", ".join(_unique(o["recorded"] for o in wrong if o["recorded"]))
    if wrong:
        texts = _unique(o["outcome"] for o in wrong)
        if len(texts) == 1 and len(wrong) == len(outcomes):  # every mode does the same
            return texts[0], recorded
        return "; ".join(f"{o['mode'].replace('_', ' ')}: {o['outcome']}" for o in wrong), recorded
    refusals = _unique(o["outcome"] for o in outcomes if o["outcome"] != AGREES)
    return ("agrees" + (f" ({'; '.join(refusals)})" if refusals else "")), recorded


def edge_section_rows(outcomes, grouped: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the edge-case table.

    One row per backend and case, in the order the outcomes came (backends, then the registry's cases):
    backend, device, dtype, case, outcome ("agrees", or what it does instead, per mode where modes differ),
    recorded (the ids of the recorded behaviours that explain a disagreement; empty: unexplained).
    With `grouped`, one row per case and outcome instead, naming the backends that share it."""
    rows = [_row(o) for o in outcomes]
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["backend"], r["device"], r["case"]), []).append(r)
    table = []
    for (backend, device, case), group in cells.items():
        outcome, recorded = edge_cell(group)
        dtype = ", ".join(_unique(o["dtype"] for o in group))
        table.append([backend, device, dtype, case, outcome, recorded])
    if not grouped:
        return ["backend", "device", "dtype", "case", "outcome", "recorded"], table
    shared: dict[tuple[str, str, str], list[str]] = {}
    for backend, device, dtype, case, outcome, recorded in table:
        shared.setdefault((case, outcome, recorded), []).append(f"{backend} ({device}, {dtype})")
    return ["case", "outcome", "recorded", "backends"], [[c, o, r, ", ".join(b)] for (c, o, r), b in shared.items()]


def edge_summary(outcomes) -> dict[str, int]:
    """Counts for a report's headline: outcomes, agreeing, recorded disagreements, unexplained ones."""
    rows = [_row(o) for o in outcomes]
    return {
        "outcomes": len(rows),
        "agree": sum(r["agrees"] for r in rows),
        "recorded": sum(not r["agrees"] and bool(r["recorded"]) for r in rows),
        "unexplained": sum(not r["agrees"] and not r["recorded"] for r in rows),
    }


def edge_matrix_rows(outcomes) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per backend, one column per edge case, each cell "agrees" (every mode and dtype
    does what the spec says, a refusal included where allowed), "recorded" (a disagreement explained in
    conformance/known/edge.py), "DIFFERS" (one nobody has explained) or "-" (not run)."""
    rows = [_row(o) for o in outcomes]
    cases = _unique(r["case"] for r in rows)
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["backend"], r["case"]), []).append(r)

    def cell(group: list[dict] | None) -> str:
        if not group:
            return "-"
        if any(not o["agrees"] and not o["recorded"] for o in group):
            return "DIFFERS"
        return "recorded" if any(not o["agrees"] for o in group) else "agrees"

    backends = _unique(r["backend"] for r in rows)
    return ["backend", *cases], [[b, *(cell(by.get((b, c))) for c in cases)] for b in backends]


EDGE_RECORD_HEADER = ["id", "source", "backends", "case", "status", "explanation", "evidence"]


def edge_record_rows(outcomes) -> list[list[str]]:
    """One row per recorded edge behaviour that covered an outcome of the run (its backend, case, modes and
    dtypes): id, source ("built-in", "backend" for the backend's own `edge_records`, or the records file),
    backends, case, status ("in use (k outcome(s))", or STALE when it covered outcomes, none of them explained by
    another record, and explained none: the backend changed, update the record), explanation and evidence. A backend's own and attached records are
    found by its name (`known.backend_named`: the run registered its backends), else the built-ins."""
    from ..conformance.known import BUILT_IN, EDGE_RECORDS, backend_named, sourced_edge_records_for
    from ..conformance.edge import record_use
    from ..conformance.records import matches

    rows = [_row(o) for o in outcomes]
    records: dict[int, list] = {}  # id(record) -> [record, source, the backends it applies to]
    for name in _unique(r["backend"] for r in rows):
        b = backend_named(name)
        sourced = (sourced_edge_records_for(b) if b is not None
                   else [(r, BUILT_IN) for r in EDGE_RECORDS if matches(name, r.backends)])
        for r, source in sourced:
            records.setdefault(id(r), [r, source, set()])[2].add(name)
    out = []
    for r, source, names in records.values():
        covered, explained = record_use(r, [SimpleNamespace(**o) for o in rows if o["backend"] in names])
        if not covered:
            continue
        status = f"in use ({explained} outcome(s))" if explained else f"STALE: covered {covered} outcome(s), explained none"
        out.append([r.id, source, r.backends, r.case, status, r.explanation, r.evidence])
    return out
