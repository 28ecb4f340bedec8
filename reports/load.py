"""A JSON report (`bnconf-report/1`, render.json_document) read back into a `render.Report`, to render it again.

    report = load_report(Path("reports/cpu.json").read_text())

Fields a report was written without (an older bnconf) take their defaults; fields this bnconf does not know
are dropped; "nan", "inf" and "-inf" strings in numeric fields become floats again. Figures are not in the
JSON: a reloaded report has none. The distributed part ("replicas", "replica_pairs") reads back into ReplicaCells
and ReplicaPairResults; a report written before they existed has none. `pair_outputs` (conformance/pair_outputs.py)
and a merged report's `environments` (reports/merge.py) are kept as the JSON has them.
"""

import json
from dataclasses import fields

from ..conformance.battery import CellResult, DiscrepancyUse, QuantityRow
from ..conformance.crosscheck import PairResult, PairRow
from ..conformance.replica_pairs import ReplicaPairResult
from ..conformance.replica_results import ReplicaCell, ReplicaRow
from .render import FORMAT, Report

_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _known(cls, d: dict) -> dict:
    """`d` restricted to the fields of dataclass `cls`, non-finite strings as floats."""
    names = {f.name for f in fields(cls)}
    return {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in d.items() if k in names}


def _row(d: dict) -> QuantityRow:
    """A row; one written before rows counted their judged examples has judged None (unknown), not 0."""
    return QuantityRow(**{"judged": None, **_known(QuantityRow, d)})


def _cell(d: dict) -> CellResult:
    return CellResult(**{**_known(CellResult, d), "rows": [_row(r) for r in d.get("rows", [])]})


def _pair(d: dict, cls=PairResult):
    """A cross-framework pair (crosscheck.PairResult), or with `cls` ReplicaPairResult a pair of replica backends."""
    rows = d.get("rows")
    return cls(**{**_known(cls, d), "rows": None if rows is None else [PairRow(**_known(PairRow, r)) for r in rows]})


def _replica_cell(d: dict) -> ReplicaCell:
    return ReplicaCell(**{**_known(ReplicaCell, d), "rows": [ReplicaRow(**_known(ReplicaRow, r)) for r in d.get("rows", [])]})


def load_report(text: str) -> Report:
    """The report a JSON document holds; ValueError when it is not a bnconf report."""
    return report_from_document(json.loads(text))


def report_from_document(doc) -> Report:
    """The report a parsed JSON document holds (a dict); ValueError when it is not a bnconf report, and
    TypeError, KeyError or ValueError when its fields are not the layout's."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document")
    return Report([_cell(c) for c in doc.get("cells", [])], doc.get("environment", {}), doc.get("seed", 0),
                  doc.get("examples", 0), doc.get("conforms", False),
                  [DiscrepancyUse(**_known(DiscrepancyUse, d)) for d in doc.get("discrepancies", [])],
                  [_pair(p) for p in doc.get("pairs", [])], {}, doc.get("inferred", []),
                  doc.get("status", "complete"), doc.get("cells_planned", 0), doc.get("edge", []),
                  replica_cells=[_replica_cell(c) for c in doc.get("replicas", [])],
                  replica_unavailable=doc.get("replicas_unavailable", []),
                  replica_pairs=[_pair(p, ReplicaPairResult) for p in doc.get("replica_pairs", [])],
                  shard=doc.get("shard", ""), pair_outputs=doc.get("pair_outputs", {}),
                  environments=doc.get("environments", []))
