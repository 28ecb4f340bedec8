"""The report's "Edge-case behaviour" table: per backend and edge case, "agrees" or what it does instead.

Semantics and precision apart: a cell's verdict (agrees, recorded, DIFFERS) is the outcome's class (values of
the spec's classes, a refusal where allowed, not a crash) and values within the dtype's rounding; a precision
note says where finite values were outside the backend's declared bound but within that rounding (the main
battery judges precision). Pure functions of the edge battery's outcomes (`conformance.edge.EdgeOutcome`, or
the dicts `as_row` makes of them, as a JSON report holds them, older ones without behaviour and precision
included); no backend is run here.
"""

from dataclasses import is_dataclass
from types import SimpleNamespace

from ..conformance.edge import AGREES, WITHIN_ROUNDING, as_row
from ..conformance.refusal import Behaviour

ROUNDING = "rounding"  # the matrix's note: values outside the declared bound, within the dtype's rounding
MATRIX_NOTE = ("Per backend and edge case over its modes and dtypes: agrees with the spec (SPEC.md section 5), recorded "
               "(what it does instead is explained in conformance/known/edge.py), DIFFERS (unexplained: a different "
               "class of outcome, or a value no rounding in the dtype explains) or - (not run); in parentheses: "
               "refuses or crashes (some mode raised), rounding (values outside the backend's declared bound but "
               "within its dtype's: a precision note, not a semantic difference).")


def _row(o) -> dict:
    r = as_row(o) if is_dataclass(o) else dict(o)
    return {"behaviour": Behaviour.VALUES.value, "precision": "", **r}


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _mode(o: dict) -> str:
    return o["mode"].replace("_", " ")


def edge_cell(outcomes: list[dict]) -> tuple[str, str, str]:
    """(what the backend does on one case over its modes, the recorded ids of its disagreements, its precision
    notes by mode).

    "agrees" when every mode returns the spec's values; "agrees within rounding" when some are outside the
    declared bound but within the dtype's rounding; "agrees (raises …)" when it refuses where the spec allows
    that; otherwise each disagreeing mode and what it does instead."""
    wrong = [o for o in outcomes if not o["agrees"]]
    recorded = ", ".join(_unique(o["recorded"] for o in wrong if o["recorded"]))
    precision = "; ".join(_unique(f"{_mode(o)}: {o['precision']}" for o in outcomes if o["precision"]))
    if wrong:
        texts = _unique(o["outcome"] for o in wrong)
        if len(texts) == 1 and len(wrong) == len(outcomes):  # every mode does the same
            return texts[0], recorded, precision
        return "; ".join(f"{_mode(o)}: {o['outcome']}" for o in wrong), recorded, precision
    refusals = _unique(o["outcome"] for o in outcomes if o["outcome"] not in (AGREES, WITHIN_ROUNDING))
    verdict = "agrees within rounding" if precision else "agrees"
    return (verdict + (f" ({'; '.join(refusals)})" if refusals else "")), recorded, precision


def edge_section_rows(outcomes, grouped: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the edge-case table.

    One row per backend and case, in the order the outcomes came (backends, then the registry's cases):
    backend, device, dtype, case, outcome ("agrees", or what it does instead, per mode where modes differ),
    recorded (the ids of the recorded behaviours that explain a disagreement; empty: unexplained), precision
    (values outside the declared bound, within the dtype's rounding; empty: none).
    With `grouped`, one row per case, outcome and precision note instead, naming the backends that share it."""
    rows = [_row(o) for o in outcomes]
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["backend"], r["device"], r["case"]), []).append(r)
    table = []
    for (backend, device, case), group in cells.items():
        outcome, recorded, precision = edge_cell(group)
        dtype = ", ".join(_unique(o["dtype"] for o in group))
        table.append([backend, device, dtype, case, outcome, recorded, precision])
    if not grouped:
        return ["backend", "device", "dtype", "case", "outcome", "recorded", "precision"], table
    shared: dict[tuple[str, str, str, str], list[str]] = {}
    for backend, device, dtype, case, outcome, recorded, precision in table:
        shared.setdefault((case, outcome, recorded, precision), []).append(f"{backend} ({device}, {dtype})")
    return (["case", "outcome", "recorded", "precision", "backends"],
            [[c, o, r, p, ", ".join(b)] for (c, o, r, p), b in shared.items()])


def edge_summary(outcomes) -> dict[str, int]:
    """Counts for a report's headline: outcomes, agreeing (within_rounding of them with a precision note),
    recorded disagreements, unexplained ones, and the refusals and crashes among all outcomes."""
    rows = [_row(o) for o in outcomes]
    return {
        "outcomes": len(rows),
        "agree": sum(r["agrees"] for r in rows),
        "recorded": sum(not r["agrees"] and bool(r["recorded"]) for r in rows),
        "unexplained": sum(not r["agrees"] and not r["recorded"] for r in rows),
        "within_rounding": sum(r["agrees"] and bool(r["precision"]) for r in rows),
        "refusals": sum(r["behaviour"] == Behaviour.REFUSAL.value for r in rows),
        "crashes": sum(r["behaviour"] == Behaviour.CRASH.value for r in rows),
    }


def edge_matrix_rows(outcomes) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per backend, one column per edge case, each cell "agrees" (every mode and dtype
    does what the spec says, a refusal included where allowed), "recorded" (a disagreement explained in
    conformance/known/edge.py), "DIFFERS" (one nobody has explained) or "-" (not run), then in parentheses
    what else happened: "refuses" or "crashes" (some mode raised), "rounding" (values outside the declared
    precision's bound, within the dtype's rounding: a precision note, not a semantic difference)."""
    rows = [_row(o) for o in outcomes]
    cases = _unique(r["case"] for r in rows)
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["backend"], r["case"]), []).append(r)
    backends = _unique(r["backend"] for r in rows)
    return ["backend", *cases], [[b, *(matrix_cell(by.get((b, c))) for c in cases)] for b in backends]


def matrix_cell(group: list[dict] | None) -> str:
    """One backend's cell for one case over its modes and dtypes (see `edge_matrix_rows`)."""
    if not group:
        return "-"
    if any(not o["agrees"] and not o["recorded"] for o in group):
        verdict = "DIFFERS"
    else:
        verdict = "recorded" if any(not o["agrees"] for o in group) else "agrees"
    notes = [b.value for b in (Behaviour.REFUSAL, Behaviour.CRASH) if any(o["behaviour"] == b.value for o in group)]
    notes += [ROUNDING] if any(o["precision"] for o in group) else []
    return verdict + (f" ({', '.join(notes)})" if notes else "")


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
