"""`bnconf merge A.json B.json ...`: reports made on different machines or in different environments as one report.

    sources = read_sources(["torch-only/report.json", "full/report.json=everything"])   # MergeError: bad input
    report = merge(sources, name="merged")                                             # a render.Report

Each report given is one environment, labelled by `PATH=LABEL` or, by default, by the shortest part of its path
that tells the reports apart (the file stem, else the folder's name). The merged report is a `bnconf-report/1`
report in which every backend is "<backend> @ <label>": every cell, quantity row, edge case, convention row, known
discrepancy, cross-framework pair and distributed result of every input is kept as it was (a partial input,
"running" or "interrupted", with all it had finished), and the environment is a dimension of its own:
"environments" in the JSON (one entry per input: file, label, status, verdict, framework versions, devices,
machine and host, each backend's verdict), the matrix backend x environment and the pairs per environment pair
in every format (reports/merge_table.py).

Across environments, each environment's representatives (one backend per convention: the ones its own
cross-framework table paired, else the first by name) are paired with every other environment's, in every mode,
from the outputs each run saved on the canonical pair inputs ("pair_outputs", conformance/pair_outputs.py),
compared exactly as one run compares two backends (crosscheck.judge_case): the same verdicts, matches / predicted
/ UNEXPECTED. The same backend in two environments is paired too: a framework upgrade, or another device.

Bad input (MergeError, exit status 2, one line): fewer than two reports, a file that is not a report this bnconf
reads (report_file.read_report), the same file (or an identical copy) twice, a merged report as an input, two
reports with one label, and reports not made alike: another seed, examples per cell, spec (reports/spec_identity.py)
or number of pair examples. A report without pair outputs (--pair-examples 0, or made by a bnconf before merge)
merges, its backends unpaired across environments, and says so.
"""

import hashlib
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..conformance.battery import DiscrepancyUse
from ..conformance.crosscheck import MODES, UNEXPECTED, PairResult
from ..conformance.pair_outputs import compare, examples_of, read_rows
from .load import report_from_document
from .render import Report, conforms
from .report_file import ReportFileError, read_report
from .summary import backend_lines

SEP = " @ "  # "<backend> @ <environment label>"
MAX_LABEL = 40
_LABEL = re.compile(r"[^\s@=][^@=\x00-\x1f\x7f]*")


class MergeError(ReportFileError):
    """Reports that cannot be merged, with what to give instead (bad input: exit status 2)."""


@dataclass
class Source:
    """One input report: its file, label, JSON document, the report it holds and its saved pair outputs."""

    path: Path
    label: str
    doc: dict
    report: Report
    cases: dict  # backend name -> [pair_outputs.Case]

    def qualified(self, name: str) -> str:
        return f"{name}{SEP}{self.label}"


def split_label(name: str) -> tuple[str, str]:
    """("<backend>", "<label>") of a merged report's backend name; (name, "") for any other."""
    backend, _, label = name.rpartition(SEP)
    return (backend, label) if backend else (name, "")


# ---------------------------------------------------------------- reading the inputs


def parse_argument(text: str) -> tuple[Path, str | None]:
    """`PATH` or `PATH=LABEL`: a path that exists as given is a path, whatever it contains."""
    if Path(text).exists() or "=" not in text:
        return Path(text), None
    path, label = text.rsplit("=", 1)
    label = label.strip()
    if not _LABEL.fullmatch(label) or len(label) > MAX_LABEL:
        raise MergeError(f"{text!r}: the label {label!r} is not one; give PATH=LABEL with a label of 1 to {MAX_LABEL} "
                         "characters without '@', '=' or control characters, e.g. reports/gpu.json=gpu-node-3")
    return Path(path), label


def _default_labels(paths: list[Path], taken: set[str]) -> list[str]:
    """The shortest description of each path that tells them apart: the file stem, else the folder's name, else
    folder/stem, else the whole path."""
    ways = (lambda p: p.stem, lambda p: p.resolve().parent.name, lambda p: f"{p.resolve().parent.name}/{p.stem}", str)
    for way in ways:
        labels = [way(p)[:MAX_LABEL].replace("@", "_").replace("=", "_") for p in paths]
        if all(labels) and len(set(labels)) == len(labels) and not set(labels) & taken:
            return labels
    return [f"{k + 1}:{p.name}"[:MAX_LABEL].replace("@", "_").replace("=", "_") for k, p in enumerate(paths)]


def read_sources(arguments: list[str]) -> list[Source]:
    """The reports named by `arguments` (`PATH` or `PATH=LABEL`), read and checked to be mergeable."""
    if len(arguments) < 2:
        raise MergeError(f"merge needs two or more reports, got {len(arguments)}; give the <name>.json files "
                         "`bnconf report` wrote in each environment, e.g. bnconf merge a/report.json b/report.json")
    given = [parse_argument(a) for a in arguments]
    seen: dict[Path, str] = {}
    contents: dict[str, Path] = {}
    docs = []
    for path, _ in given:
        doc = read_report(path)  # ReportFileError: missing, not JSON, not a report, another format
        resolved = path.resolve()
        if resolved in seen:
            also = "" if seen[resolved] == str(path) else f" (also as {seen[resolved]})"
            raise MergeError(f"{path} is given twice{also}; give each environment's report once")
        seen[resolved] = str(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in contents:
            raise MergeError(f"{path} is the same report as {contents[digest]} (identical contents); give each "
                             "environment's own report once")
        contents[digest] = path
        if doc.get("environments"):
            raise MergeError(f"{path} is already a merged report (of {', '.join(_labels_of(doc))}); merge the reports "
                             "it was made from")
        docs.append(doc)
    named = {label for _, label in given if label}
    automatic = iter(_default_labels([p for p, label in given if not label], named))
    labels = [label or next(automatic) for _, label in given]
    for k, label in enumerate(labels):
        if labels.index(label) != k:
            raise MergeError(f"{given[labels.index(label)][0]} and {given[k][0]} are both labelled {label!r}; name "
                             "each environment with PATH=LABEL, e.g. a/report.json=cpu b/report.json=gpu")
    sources = [_source(path, label, doc) for (path, _), label, doc in zip(given, labels, docs)]
    check_alike(sources)
    return sources


def _labels_of(doc: dict) -> list[str]:
    return [str(e.get("label", "?")) for e in doc.get("environments", []) if isinstance(e, dict)]


def _source(path: Path, label: str, doc: dict) -> Source:
    try:
        report = report_from_document(doc)
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise MergeError(f"{path} cannot be read as a report ({type(e).__name__}: {e}); give the <name>.json file "
                         "`bnconf report` wrote, unedited") from None
    outputs = doc.get("pair_outputs") or {}
    if not isinstance(outputs, dict):
        raise MergeError(f"{path}: \"pair_outputs\" is not an object of backends; give the file `bnconf report` wrote")
    cases = {}
    for backend, rows in outputs.items():
        try:
            cases[str(backend)] = read_rows(rows)
        except ValueError as e:
            raise MergeError(f"{path}: the pair outputs of {backend} cannot be read ({e}); rerun `bnconf report` "
                             "there") from None
    return Source(path, label, doc, report, cases)


def pair_examples(source: Source) -> int | None:
    """The pair examples its outputs were saved with; None: it saved none."""
    found = set().union(*(examples_of(c) for c in source.cases.values())) if source.cases else set()
    return max(found) if found else None


def _alike(sources: list[Source], what: str, value, fix: str) -> None:
    first = sources[0]
    for s in sources[1:]:
        if value(s) != value(first):
            raise MergeError(f"the {what} differs: {first.path} has {_shown(value(first))}, {s.path} {_shown(value(s))}; "
                             f"merge only reports made alike: {fix}")


def _shown(v) -> str:
    if isinstance(v, dict):
        return f"{v.get('digest', '?')} (bnconf {v.get('bnconf', '?')})" if v else "none (a bnconf before merge)"
    return str(v)


def check_alike(sources: list[Source]) -> None:
    """The same seed, examples per cell, spec and pair examples (where both saved pair outputs)."""
    _alike(sources, "seed", lambda s: s.doc.get("seed"), "rerun one with the other's --seed")
    _alike(sources, "number of examples per cell", lambda s: s.doc.get("examples"), "rerun one with the other's --examples")
    _alike(sources, "spec", lambda s: s.doc.get("spec") or {},
           "make both reports with the same bnconf (its spec judges every verdict)")
    saved = [s for s in sources if pair_examples(s) is not None]
    if saved:
        _alike(saved, "number of pair examples", pair_examples, "rerun one with the other's --pair-examples")


# ---------------------------------------------------------------- the environments and the pairs across them


def environment_entry(source: Source) -> dict:
    """What the merged report says of one input: where it came from, how it went, what it ran on."""
    doc, env = source.doc, dict(source.doc.get("environment") or {})
    lines = backend_lines(source.report)
    return {
        "label": source.label, "file": str(source.path), "status": doc.get("status", "complete"),
        "conforms": bool(doc.get("conforms")), "seed": doc.get("seed"), "examples": doc.get("examples"),
        "pair_examples": pair_examples(source), "shard": doc.get("shard", ""), "spec": doc.get("spec") or {},
        "versions": env, "machine": env.get("machine", ""), "host": env.get("host", ""),
        "devices": sorted({c.device for c in source.report.results if c.status.value != "unsupported"}),
        "cells": sum(c.status.value == "ran" for c in source.report.results),
        "cells_planned": doc.get("cells_planned", 0),
        "backends": {line.backend: line.verdict for line in lines},
        "paired": representatives(source),
    }


def representatives(source: Source) -> list[str]:
    """One backend per convention among those with saved pair outputs: first the ones the report's own
    cross-framework table paired, then by name."""
    own = [n for p in source.report.pairs for n in (p.source, p.target)]
    out, conventions = [], set()
    for name in dict.fromkeys(own + sorted(source.cases)):
        cases = source.cases.get(name)
        if not cases:
            continue
        convention = cases[0].convention
        if convention not in conventions:
            conventions.add(convention)
            out.append(name)
    return out


def cross_pairs(sources: list[Source], progress=None) -> list[PairResult]:
    """Every environment's representatives against every other's, in every mode, from the saved outputs."""
    out = []
    for k, s in enumerate(sources):
        for t in sources[k + 1:]:
            mine, theirs = representatives(s), representatives(t)
            if progress and mine and theirs:
                progress(f"pairing {len(mine)} backend(s) of {s.label} with {len(theirs)} of {t.label}")
            for a in mine:
                for b in theirs:
                    out += [_pair(s, a, t, b, mode) for mode in MODES]
    return out


def _pair(s: Source, a: str, t: Source, b: str, mode) -> PairResult:
    try:
        return compare(s.qualified(a), s.cases[a], t.qualified(b), t.cases[b], mode)
    except Exception as e:  # noqa: BLE001 - one pair's failure never loses the others
        return PairResult(s.qualified(a), t.qualified(b), mode.value, "error", f"{type(e).__name__}: {e}")


def pair_problems(pairs) -> list[str]:
    """A pair that raised, or a quantity that differs in a way the spec does not predict (conformance/run.py's rule)."""
    out = [f"{p.source} vs {p.target} {p.mode}: {p.status}" for p in pairs if p.status == "error"]
    out += [f"{p.source} vs {p.target} {p.mode} {r.quantity}: {r.verdict}"
            for p in pairs for r in p.rows or [] if r.verdict == UNEXPECTED]
    return out


# ---------------------------------------------------------------- the merged report


def _rows(source: Source, rows) -> list[dict]:
    return [dict(r, backend=source.qualified(r.get("backend", "?"))) for r in rows]


def _pairs(source: Source, pairs) -> list:
    out = []
    for p in pairs:
        rows = None if p.rows is None else [replace(r, source=source.qualified(r.source), target=source.qualified(r.target))
                                            for r in p.rows]
        out.append(replace(p, source=source.qualified(p.source), target=source.qualified(p.target), rows=rows))
    return out


def _status(sources: list[Source]) -> str:
    """"interrupted" when an input is, else "running" when one is (a partial report), else "complete"."""
    statuses = {s.report.status for s in sources}
    return next((s for s in ("interrupted", "running") if s in statuses), "complete")


@dataclass
class Merged:
    report: Report
    cross: list  # the pairs across environments (also in report.pairs)
    partial: list  # labels of the inputs that are not complete

    @property
    def conforms(self) -> bool:
        return conforms(self.report) and not self.partial


def merge(sources: list[Source], name: str = "merged", progress=None) -> Merged:
    """One report of every input, every backend "<backend> @ <label>", with the pairs across environments."""
    cross = cross_pairs(sources, progress)
    results, discrepancies, pairs, inferred, edge = [], [], [], [], []
    replica_cells, unavailable, replica_pairs = [], [], []
    for s in sources:
        r = s.report
        results += [replace(c, backend=s.qualified(c.backend)) for c in r.results]
        discrepancies += [DiscrepancyUse(**{**asdict(d), "backends": s.qualified(d.backends)}) for d in r.discrepancies]
        pairs += _pairs(s, r.pairs)
        inferred += _rows(s, r.inferred)
        edge += _rows(s, r.edge)
        replica_cells += [replace(c, backend=s.qualified(c.backend)) for c in r.replica_cells]
        unavailable += [dict(u, family=s.qualified(u.get("family", "?"))) for u in r.replica_unavailable]
        replica_pairs += _pairs(s, r.replica_pairs)
    environment = {s.label: "(" + ", ".join(f"{k} {v}" for k, v in (s.doc.get("environment") or {}).items()) + ")"
                   for s in sources}
    first = sources[0].doc
    report = Report(results, environment, first.get("seed", 0), first.get("examples", 0),
                    all(s.doc.get("conforms") for s in sources) and not pair_problems(cross), discrepancies,
                    pairs + cross, {}, inferred, _status(sources), sum(s.report.cells_planned for s in sources), edge,
                    name, replica_cells=replica_cells, replica_unavailable=unavailable, replica_pairs=replica_pairs,
                    environments=[environment_entry(s) for s in sources])
    return Merged(report, cross, [s.label for s in sources if s.report.status != "complete"])


def saved_nothing(sources: list[Source]) -> list[Source]:
    """The inputs with no pair outputs: their backends are not paired across environments."""
    return [s for s in sources if not any(s.cases.values())]

