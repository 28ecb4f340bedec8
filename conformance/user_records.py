"""A user's own records: known discrepancies and edge behaviours of a backend bnconf does not ship.

    load_records("path/to/records.py:RECORDS")   -> UserRecords(discrepancies, edge, target)
    load_records("my_pkg.bn_records:RECORDS")       (module:attribute, like a backend TARGET)
    attach_records(backends, records)               the records then apply to those backends

The attribute holds a sequence mixing `KnownDiscrepancy` and `EdgeRecord` (bnconf.conformance.records), one
record, or an object with `known_discrepancies` / `edge_records` attributes (a module, a backend). A backend
may also carry its own, as the optional attributes `known_discrepancies` and `edge_records`. Either way the
records go through the same door as bnconf's (`known.discrepancies_for` / `known.edge_records_for`: the
backend's own, then the attached files', then the built-ins, the first covering record applying) and are
checked the same way: a covered case is checked against the recorded behaviour, a record no case needed is
reported stale, and the report shows each record's explanation, evidence and source.

Every record is checked when it is loaded (`check_records`): a quantity, mode, dtype or edge case that does not
exist, a field of the wrong type, an empty explanation or evidence, or two records with one id is a
`RecordsError` (bad input: `bnconf` exits 2 with its one line). A record whose `backends` pattern matches no
backend of the run is only a warning (one records file may cover several backends).
"""

import sys
from dataclasses import dataclass
from pathlib import Path

from ..spec import Convention, Mode
from ..spec.edge_cases import EDGE_CASES
from ..spec.formats import FORMATS
from . import known
from .records import EdgeRecord, KnownDiscrepancy, matches

QUANTITIES = tuple(dict.fromkeys(q for m in Mode for q in m.quantities))
"""Every quantity a mode returns (`spec.Mode.quantities`): what a known discrepancy may name."""


class RecordsError(ValueError):
    """A records file that cannot be loaded, or a record that names something that does not exist: one line
    naming the problem and the fix."""


@dataclass(frozen=True)
class UserRecords:
    """The records of one records file (or of a backend's own attributes)."""

    discrepancies: tuple[KnownDiscrepancy, ...] = ()
    edge: tuple[EdgeRecord, ...] = ()
    target: str = ""  # where they came from, as the user named it: the report's "source"


# ---------------------------------------------------------------- loading


def _where(target: str) -> str:
    """A target as a worker process can load it again: a file's path made absolute."""
    module_part, _, attr = target.rpartition(":")
    return f"{Path(module_part).resolve()}:{attr}" if module_part.endswith(".py") else target


def _import(target: str):
    from ..adapters.registry import TargetError, _import_target

    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise RecordsError(f"--records {target!r}: expected path/to/records.py:ATTRIBUTE or module:attribute, "
                           "e.g. my_records.py:RECORDS")
    if module_part.endswith(".py") and not Path(module_part).is_file():
        raise RecordsError(f"--records {target!r}: no file {module_part} (from {Path.cwd()}); check the path")
    try:
        module = sys.modules[_import_target(f"{module_part}:__name__")]
    except TargetError as e:
        raise RecordsError(f"--records {target!r}: {e}") from e
    except ImportError as e:
        raise RecordsError(f"--records {target!r}: cannot import {e.name or 'it'}: {' '.join(str(e).split())}; "
                           "check the module name, or install what the records file imports") from e
    except (Exception, SystemExit) as e:  # the user's file failing at import: one line
        raise RecordsError(f"--records {target!r}: importing it raised {type(e).__name__}: "
                           f"{' '.join(str(e).split())}; fix the records file") from e
    if not hasattr(module, attr):
        there = [n for n, v in vars(module).items() if not n.startswith("_") and _holds_records(v)]
        raise RecordsError(f"--records {target!r}: {module_part} has no attribute {attr!r}; "
                           + (f"records there: {', '.join(there)}" if there else
                              "name the attribute that holds the KnownDiscrepancy / EdgeRecord entries"))
    return getattr(module, attr)


def _is_record(v) -> bool:
    return isinstance(v, (KnownDiscrepancy, EdgeRecord))


def _holds_records(v) -> bool:
    return _is_record(v) or (isinstance(v, (list, tuple)) and bool(v) and all(map(_is_record, v)))


def _records_of(obj, target: str) -> list:
    """The records an attribute holds: a sequence of them, one, or an object with the two attributes."""
    if _is_record(obj):
        return [obj]
    if isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "known_discrepancies") or hasattr(obj, "edge_records"):
        items = []
        for attribute in ("known_discrepancies", "edge_records"):
            value = getattr(obj, attribute, None) or ()
            if not isinstance(value, (list, tuple)):
                raise RecordsError(f"{target}: {attribute} is a {type(value).__name__}, not a tuple of records; "
                                   f"make it a tuple, e.g. {attribute} = (RECORD,)")
            items += list(value)
    else:
        raise RecordsError(f"{target}: a {type(obj).__name__} is not a records collection; name a tuple mixing "
                           "KnownDiscrepancy and EdgeRecord entries (bnconf.conformance.records), or an object with "
                           "known_discrepancies / edge_records")
    for k, item in enumerate(items):
        if not _is_record(item):
            raise RecordsError(f"{target}: item {k} is a {type(item).__name__}, not a KnownDiscrepancy or EdgeRecord; "
                               "build every record with bnconf.conformance.records")
    return items


def load_records(target: str) -> UserRecords:
    """The records `target` names (path/to/file.py:ATTR or module:attr), each checked (`check_records`).
    Raises RecordsError for a file that does not import or a record that does not hold."""
    items = _records_of(_import(target), f"--records {target!r}")
    check_records(items, f"--records {target!r}")
    return UserRecords(tuple(r for r in items if isinstance(r, KnownDiscrepancy)),
                       tuple(r for r in items if isinstance(r, EdgeRecord)), target)


def own_records(backend) -> UserRecords:
    """A backend's own records (its optional `known_discrepancies` / `edge_records` attributes), checked."""
    where = f"backend {backend.name!r}"
    found = {}
    for attribute, kind in (("known_discrepancies", KnownDiscrepancy), ("edge_records", EdgeRecord)):
        value = getattr(backend, attribute, None) or ()
        if not isinstance(value, (list, tuple)):
            raise RecordsError(f"{where}: {attribute} is a {type(value).__name__}, not a tuple of records; "
                               f"make it a tuple, e.g. {attribute} = (RECORD,)")
        for r in value:
            if not isinstance(r, kind):
                raise RecordsError(f"{where}: {attribute} holds a {type(r).__name__}, not a {kind.__name__}; put "
                                   "KnownDiscrepancy entries in known_discrepancies and EdgeRecord entries in edge_records")
        found[attribute] = tuple(value)
    check_records((*found["known_discrepancies"], *found["edge_records"]), where)
    return UserRecords(found["known_discrepancies"], found["edge_records"], known.BACKEND)


# ---------------------------------------------------------------- checking


def _names(value, field: str, rid: str, where: str, example: str) -> tuple:
    """A tuple field of a record: a tuple or list, not one string (whose characters would be its items)."""
    if isinstance(value, str) or not isinstance(value, (tuple, list, frozenset, set)):
        raise RecordsError(f"{where}: record {rid!r}: {field} must be a tuple, got {value!r}; write e.g. {field}={example}")
    return tuple(value)


def _check_dtype(d, rid: str, where: str) -> None:
    parts = d.split("/") if isinstance(d, str) else [d]
    if not all(isinstance(p, str) and p in FORMATS for p in parts):
        raise RecordsError(f"{where}: record {rid!r}: unknown dtype {d!r}; pick from {', '.join(FORMATS)}")


def _check_modes(modes, rid: str, where: str) -> tuple:
    modes = _names(modes, "modes", rid, where, "(Mode.TRAIN_FORWARD,)")
    for m in modes:
        if not isinstance(m, Mode):
            members = ", ".join(f"Mode.{x.name}" for x in Mode)
            raise RecordsError(f"{where}: record {rid!r}: unknown mode {m!r}; use bnconf.spec.Mode members: {members}")
    return modes


def _check_text(r, rid: str, where: str) -> None:
    if not isinstance(r.backends, str) or not r.backends:
        raise RecordsError(f"{where}: record {rid!r}: backends must be the backend's name as a string (`*` matches "
                           f"any run of characters), got {r.backends!r}")
    for field, fix in (("explanation", "what the backend does instead, and why"),
                       ("evidence", "the source line, upstream issue or minimal input that shows it")):
        value = getattr(r, field)
        if not isinstance(value, str) or not value.strip():
            raise RecordsError(f"{where}: record {rid!r} has no {field}; write {fix}")


def check_record(r, where: str) -> None:
    """Raise RecordsError naming what in `r` does not exist or has the wrong type."""
    rid = r.id
    if not isinstance(rid, str) or not rid:
        raise RecordsError(f"{where}: a record's id must be a non-empty string, got {rid!r}; give it a unique id")
    _check_text(r, rid, where)
    modes = _check_modes(r.modes, rid, where)
    for d in _names(r.dtypes, "dtypes", rid, where, "('float32',)"):
        _check_dtype(d, rid, where)
    if isinstance(r, KnownDiscrepancy):
        quantities = _names(r.quantities, "quantities", rid, where, "('y',)")
        if not quantities:
            raise RecordsError(f"{where}: record {rid!r} names no quantity; list those that differ, e.g. quantities=('y',)")
        for q in quantities:
            if q not in QUANTITIES:
                raise RecordsError(f"{where}: record {rid!r}: unknown quantity {q!r}; pick from {', '.join(QUANTITIES)}")
        returned = {q for m in (modes or tuple(Mode)) for q in m.quantities}
        never = [q for q in quantities if q not in returned]
        if never:
            raise RecordsError(f"{where}: record {rid!r}: {', '.join(never)} is returned by none of its modes "
                               f"({', '.join(m.value for m in modes)}); fix the quantities or the modes")
        for d in _names(r.devices, "devices", rid, where, "('cpu',)"):
            if not isinstance(d, str):
                raise RecordsError(f"{where}: record {rid!r}: device {d!r} is not a string; write e.g. devices=('cpu',)")
        for field in ("when", "precision", "adjust", "unchecked"):
            value = getattr(r, field)
            if value is not None and not callable(value):
                raise RecordsError(f"{where}: record {rid!r}: {field} must be a function of the inputs, got {value!r}")
        if r.convention is not None and not isinstance(r.convention, Convention):
            raise RecordsError(f"{where}: record {rid!r}: convention must be a bnconf.spec.Convention (e.g. "
                               f"bnconf.spec.convention('torch.nn.BatchNorm2d')), got {r.convention!r}")
    else:
        if not isinstance(r.case, str) or not any(matches(c.id, r.case) for c in EDGE_CASES):
            raise RecordsError(f"{where}: record {rid!r}: unknown edge case {r.case!r}; pick from "
                               f"{', '.join(c.id for c in EDGE_CASES)} (`*` matches any run of characters)")
        if not (isinstance(r.outcome, str) or callable(r.outcome)):
            raise RecordsError(f"{where}: record {rid!r}: outcome must be the outcome's description (`*` wildcards) "
                               f"or a function of it, got {r.outcome!r}")


def check_records(records, where: str) -> None:
    """Check every record, and that no two share an id."""
    seen = set()
    for r in records:
        check_record(r, where)
        if r.id in seen:
            raise RecordsError(f"{where}: two records have the id {r.id!r}; give each record its own id")
        seen.add(r.id)


# ---------------------------------------------------------------- attaching


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def attach_records(backends, records: UserRecords, warn=_stderr) -> None:
    """Make `records` apply to each of `backends` (through `known.discrepancies_for` / `edge_records_for`).

    Checks first that the backends' own records hold and that no backend would then have two records with one
    id (RecordsError); `warn(line)` (default: stderr; None: silent) is told of each record whose `backends`
    pattern matches none of `backends`. Attaching the same file again changes nothing."""
    backends = list(backends)
    source = records.target or "records"
    for b in backends:
        own_records(b)
    for b in backends:
        fresh = source not in known.attached_sources(b)
        known.attach(b, source, records.discrepancies, records.edge)
        try:
            _check_ids(b)
        except RecordsError:
            if fresh:
                known.detach(b, source)
            raise
    if warn is not None:
        names = [b.name for b in backends]
        for r in (*records.discrepancies, *records.edge):
            if not any(matches(n, r.backends) for n in names):
                warn(f"bnconf: warning: {source}: record {r.id!r} is for backends {r.backends!r}, which matches no "
                     f"backend of this run ({', '.join(names) or 'none'})")


def _check_ids(backend) -> None:
    """No two records that apply to `backend` share an id (a report and a cell's counts name records by id)."""
    for kind, sourced in (("known discrepancy", known.sourced_discrepancies_for(backend)),
                          ("edge record", known.sourced_edge_records_for(backend))):
        first: dict[str, str] = {}
        for r, where in sourced:
            if r.id in first:
                raise RecordsError(f"{kind} id {r.id!r} of {where} is also the id of one of {first[r.id]}'s records "
                                   f"(both apply to backend {backend.name!r}); give each record its own id")
            first[r.id] = where


def prepare_records(backends, targets=(), warn=_stderr) -> list[UserRecords]:
    """A run's records: every backend's own records checked (a warning for one whose pattern does not match the
    backend's name), then each records file of `targets` loaded and attached to every backend, and only those:
    files an earlier run in this process attached are detached. Returns the files' records, in order."""
    loaded = [load_records(t) for t in targets]
    for b in backends:
        known.register(b)  # the report finds its records by name
        for source in known.attached_sources(b):  # a run's files are exactly `targets` (an earlier run's go)
            if source not in targets:
                known.detach(b, source)
        own = own_records(b)
        for r in (*own.discrepancies, *own.edge):
            if warn is not None and not matches(b.name, r.backends):
                warn(f"bnconf: warning: backend {b.name!r}: its own record {r.id!r} is for backends {r.backends!r}, "
                     "which does not match its name, so it never applies")
        _check_ids(b)
    for records in loaded:
        attach_records(backends, records, warn=warn)
    return loaded


def job_records(backends) -> list[list[str]]:
    """The records files attached to `backends`, as [loadable target, target as named] pairs: what an isolated
    worker needs to attach the same records (`attach_targets`)."""
    out: dict[str, None] = {}
    for b in backends:
        out.update(dict.fromkeys(known.attached_sources(b)))
    return [[_where(t), t] for t in out]


def attach_targets(backends, targets) -> None:
    """Load and attach records files given as `job_records` pairs (or plain targets), silently: a worker's
    backends are a part of the run, so a record for another backend is no news there."""
    for t in targets:
        loadable, shown = (t, t) if isinstance(t, str) else t
        records = load_records(loadable)
        attach_records(backends, UserRecords(records.discrepancies, records.edge, shown), warn=None)


__all__ = ["QUANTITIES", "RecordsError", "UserRecords", "attach_records", "attach_targets", "check_record",
           "check_records", "job_records", "load_records", "own_records", "prepare_records"]
