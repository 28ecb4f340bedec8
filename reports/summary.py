"""What a report opens with: one line per backend, and the findings a reader has to act on.

    backend_lines(report) -> [BackendLine]   cells, examples judged/drawn, row verdict counts, worst error/bound
    findings(report)      -> [Finding]       every reason the run does not conform (conformance/run.py's rules),
                                             each with what was seen, its diagnosis and the line that replays it
    totals(lines)         -> BackendLine     the sums over every backend

Pure data from a `render.Report` (the battery's CellResult rows, edge-case, inference and pair rows, and the
distributed part's ReplicaCells: a replica backend has a line of its own, after the single-device ones, counting
its (world size, split, dtype) cells and their quantity rows; its NON-CONFORMANT rows and the cells that crashed,
timed out or raised are findings); the renderers format it. Nothing here runs a backend.
"""

import math
import re
from dataclasses import dataclass, field

from ..conformance.status import CellStatus, RowVerdict
from . import replica_table

UNEXPECTED_PAIR = "UNEXPECTED difference"  # crosscheck.UNEXPECTED (not imported: crosscheck pulls in the engine)


@dataclass
class BackendLine:
    """One backend over the run."""

    backend: str
    cells: int = 0  # cells selected for it that it supports (ran, raised, crashed, ...)
    unsupported: int = 0
    drawn: int = 0  # examples drawn over its cells
    judged: int | None = 0  # examples with at least one judged element; None: not recorded (an older report)
    conforms: int = 0  # quantity rows per verdict
    known: int = 0
    ill_conditioned: int = 0
    non_conformant: int = 0
    errors: int = 0  # cells that raised, crashed, timed out, ran out of memory or did not run
    edge: list[int] = field(default_factory=lambda: [0, 0, 0])  # edge-case outcomes: agree, recorded, unexplained
    other_findings: int = 0  # unexplained edge cases, convention DIFFERS, unexpected pair differences
    worst_ratio: float | None = None  # largest error/bound over its rows not covered by a record; None: no such row
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        if self.non_conformant or self.other_findings:
            return RowVerdict.NON_CONFORMANT.value
        if self.errors:
            return "ERROR"
        return "conforms" if self.cells else CellStatus.UNSUPPORTED.value


@dataclass
class Finding:
    """One reason the run does not conform, with what a reader needs to act on it."""

    backend: str
    where: str  # "cpu float32 train_forward", "edge case nan-in-x", "convention momentum_style", "pair with B train_forward"
    subject: str  # the quantity, or "-"
    verdict: str  # "NON-CONFORMANT (convention difference)", "ERROR", "CRASHED", "DIFFERS", "UNEXPECTED difference"
    diagnosis: str  # the named mistake and its evidence, else what failed
    observed: float | None = None  # at the worst element of the case shown
    expected: float | None = None
    relative_error: float | None = None
    ratio: float | None = None  # error/bound of the case shown
    judged: int | None = None  # examples behind the finding
    drawn: int | None = None
    replay: str = ""  # the command(s) that rerun it, "; "-separated


def _worse(a: float | None, b: float) -> float:
    """The larger of two error/bound ratios, NaN (an error the bound cannot measure) counting as the largest."""
    if a is None:
        return b
    return b if math.isnan(b) or (not math.isnan(a) and b > a) else a


def _plus(a: int | None, b: int | None) -> int | None:
    """A sum of counts where None (not recorded) makes the sum unknown."""
    return None if a is None or b is None else a + b


def cell_examples(cell) -> tuple[int, int | None]:
    """(examples drawn, judged) in one cell: its coverage when recorded, else its fullest row (judged None: the
    report predates the count)."""
    coverage = getattr(cell, "coverage", None) or {}
    if coverage:
        return sum(v[0] for v in coverage.values()), sum(v[1] for v in coverage.values())
    rows = cell.rows or []
    judged = [getattr(r, "judged", None) for r in rows]
    return max((r.examples for r in rows), default=0), None if None in judged else max(judged, default=0)


_COUNTER = {RowVerdict.CONFORMS: "conforms", RowVerdict.KNOWN: "known", RowVerdict.ILL_CONDITIONED: "ill_conditioned",
            RowVerdict.NON_CONFORMANT: "non_conformant"}


def _add_cell(line: BackendLine, cell) -> None:
    if cell.status is CellStatus.UNSUPPORTED:
        line.unsupported += 1
        return
    line.cells += 1
    line.errors += not cell.status.acceptable
    line.seconds += cell.seconds
    drawn, judged = cell_examples(cell)
    line.drawn, line.judged = line.drawn + drawn, _plus(line.judged, judged)
    for r in cell.rows:
        verdict = RowVerdict(r.verdict)
        setattr(line, _COUNTER[verdict], getattr(line, _COUNTER[verdict]) + 1)
        if verdict is not RowVerdict.KNOWN:
            line.worst_ratio = _worse(line.worst_ratio, float(r.max_ratio))


_REPLICA_COUNTER = {"conforms": "conforms", "known discrepancy": "known", "ill-conditioned": "ill_conditioned"}


def _add_replica_cell(line: BackendLine, cell) -> None:
    """A distributed cell (conformance/replica_results.ReplicaCell): unsupported or skipped cells count as
    unsupported, a crashed, timed-out or raising one as an error; its rows by verdict (any verdict but conforms,
    ill-conditioned and known discrepancy is NON-CONFORMANT); examples: its fullest row's."""
    if cell.status in replica_table.NOT_RUN:
        line.unsupported += 1
        return
    line.cells += 1
    line.errors += cell.status != "ran"
    line.seconds += cell.seconds
    line.drawn += max((r.examples for r in cell.rows), default=0)
    line.judged = _plus(line.judged, max((r.judged for r in cell.rows), default=0))
    for r in cell.rows:
        counter = _REPLICA_COUNTER.get(r.verdict, "non_conformant")
        setattr(line, counter, getattr(line, counter) + 1)
        if r.verdict != replica_table.KNOWN and r.max_ratio is not None:
            line.worst_ratio = _worse(line.worst_ratio, float(r.max_ratio))


def backend_lines(report) -> list[BackendLine]:
    """One line per backend, in the order the backends first appear (the distributed part's after the others)."""
    lines: dict[str, BackendLine] = {}
    line = lambda name: lines.setdefault(name, BackendLine(name))  # noqa: E731
    for cell in report.results:
        _add_cell(line(cell.backend), cell)
    for cell in getattr(report, "replica_cells", []):
        _add_replica_cell(line(cell.backend), cell)
    for r in report.edge:
        k = 0 if r["agrees"] else 1 if r["recorded"] else 2
        line(r["backend"]).edge[k] += 1
    for f in _edge_findings(report.edge) + _inference_findings(report.inferred):
        line(f.backend).other_findings += 1
    for f in _pair_findings(report.pairs) + replica_pair_findings(getattr(report, "replica_pairs", [])):
        for name in f.backend.split(" vs "):
            if name in lines:
                lines[name].other_findings += 1
    return list(lines.values())


def totals(lines: list[BackendLine]) -> BackendLine:
    """The sums over every backend (worst_ratio: the worst of them)."""
    total = BackendLine(f"{len(lines)} backend(s)", edge=[sum(line.edge[k] for line in lines) for k in range(3)])
    for line in lines:
        for name in ("cells", "unsupported", "drawn", "conforms", "known", "ill_conditioned", "non_conformant",
                     "errors", "other_findings", "seconds"):
            setattr(total, name, getattr(total, name) + getattr(line, name))
        total.judged = _plus(total.judged, line.judged)
        if line.worst_ratio is not None:
            total.worst_ratio = _worse(total.worst_ratio, line.worst_ratio)
    return total


# ---------------------------------------------------------------- findings, one function per kind


def _row_diagnosis(row) -> str:
    """The row's named mistake with its note, else what the spec's verdict and the detail say."""
    diagnosis = getattr(row, "diagnosis", "")
    if diagnosis:
        note = getattr(row, "diagnosis_note", "")
        text = f"{diagnosis} ({note})" if note else diagnosis
        return f"{text}; {row.detail}" if row.detail and row.detail not in text else text
    return row.detail or row.failure


_REPLAY_IN_REASON = re.compile(r"; replay: (bnconf replay .*?)(?=; |$)")


def reason_replays(reason: str) -> tuple[str, list[str]]:
    """A crashed or ERROR cell's reason without its "; replay: <command>" parts, and those commands."""
    return _REPLAY_IN_REASON.sub("", reason), _REPLAY_IN_REASON.findall(reason)


def _cell_findings(results) -> list[Finding]:
    """Each cell that did not finish cleanly, and each NON-CONFORMANT row."""
    out = []
    for c in results:
        where = f"{c.device} {c.dtype} {c.mode}"
        if not c.status.acceptable:
            reason, replays = reason_replays(c.reason)
            drawn, judged = cell_examples(c)
            out.append(Finding(c.backend, where, "-", c.status.value.upper(), reason, judged=judged if drawn else None,
                               drawn=drawn or None, replay="; ".join(replays)))
        out += [Finding(c.backend, where, r.quantity, r.verdict_text, _row_diagnosis(r), getattr(r, "observed", None),
                        getattr(r, "expected", None), getattr(r, "relative_error", None), float(r.max_ratio),
                        getattr(r, "judged", None), r.examples, getattr(r, "replay", ""))
                for r in c.rows if RowVerdict(r.verdict) is RowVerdict.NON_CONFORMANT]
    return out


def _replica_findings(cells) -> list[Finding]:
    """Each distributed cell that crashed, timed out or raised, and each NON-CONFORMANT quantity of one, with
    the named mistake (spec/replica_diagnosis.py) and the line that replays the cell's first failing example."""
    out = []
    for c in cells:
        where = replica_table.where(c)
        if c.status not in replica_table.NOT_RUN and c.status != "ran":
            reason, replays = reason_replays(c.reason)
            out.append(Finding(c.backend, where, "-", replica_table.status_text(c), reason,
                               replay="; ".join(_unique_texts([c.replay, *replays]))))
        out += [Finding(c.backend, where, r.quantity, replica_table.row_verdict(r), replica_table.row_why(r),
                        r.observed, r.expected, replica_table.relative_error(r),
                        None if r.max_ratio is None else float(r.max_ratio), r.judged, r.examples, c.replay)
                for r in c.rows if not r.accepted]
    return out


def _unique_texts(texts) -> list[str]:
    return list(dict.fromkeys(t for t in texts if t))


def _edge_findings(edge) -> list[Finding]:
    """Per backend, device and edge case: the outcomes that disagree with the spec and that no record explains."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in edge:
        if not r["agrees"] and not r["recorded"]:
            groups.setdefault((r["backend"], r["device"], r["case"]), []).append(r)
    out = []
    for (backend, device, case), rows in groups.items():
        seen = list(dict.fromkeys(f"{r['mode'].replace('_', ' ')} {r['dtype']}: {r['outcome']}" for r in rows))
        replay = "; ".join(dict.fromkeys(r["replay"] for r in rows if r.get("replay")))
        out.append(Finding(backend, f"{device} edge case {case}", "-", "DIFFERS", "; ".join(seen), replay=replay))
    return out


def _inference_findings(inferred) -> list[Finding]:
    """A convention property that DIFFERS from the declared record unexplained, or could not be probed."""
    accepted = lambda v: v == "agrees" or v.startswith("differs as recorded")  # noqa: E731
    return [Finding(r["backend"], "convention", r["property"], r["verdict"],
                    f"inferred {r['value']}: {r['evidence']}", replay=r.get("replay", ""))
            for r in inferred if not accepted(r.get("verdict", "agrees" if r.get("agrees") else "DIFFERS"))]


def _pair_findings(pairs, where=lambda p: p.mode) -> list[Finding]:
    """A cross-framework pair that could not run, or that differs in a way the spec does not predict; `where`
    says where (the mode; for a pair of replica backends its world size, split and dtype)."""
    out = []
    for p in pairs:
        who = f"{p.source} vs {p.target}"
        if p.status == "error":
            out.append(Finding(who, where(p), "-", "ERROR", p.reason))
        out += [Finding(who, where(p), r.quantity, r.verdict, r.residuals or r.worst_input,
                        relative_error=r.max_relative, drawn=r.examples)
                for r in p.rows or [] if r.verdict == UNEXPECTED_PAIR]
    return out


def replica_pair_findings(pairs) -> list[Finding]:
    """Two synchronized replica backends (conformance/replica_pairs.ReplicaPairResult) that raised, or that
    differ in a way neither the spec nor a record predicts."""
    return _pair_findings(pairs, where=lambda p: f"distributed W={p.world_size} {p.split} {p.dtype}")


def findings(report) -> list[Finding]:
    """Every finding: cells and rows first (in the order they ran), then the distributed cells and rows and the
    pairs of synchronized replica backends, edge cases, conventions and pairs."""
    return (_cell_findings(report.results) + _replica_findings(getattr(report, "replica_cells", []))
            + replica_pair_findings(getattr(report, "replica_pairs", []))
            + _edge_findings(report.edge) + _inference_findings(report.inferred) + _pair_findings(report.pairs))
