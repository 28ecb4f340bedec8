"""The built-in registries, and the one place that says which records apply to a backend.

One data module per framework family (torch, tensorflow, keras, jax: `KnownDiscrepancy` entries) and one for
the edge cases (edge: `EdgeRecord` entries); data only, no framework import. The machinery asks
`discrepancies_for(backend)` / `edge_records_for(backend)`: the backend's own records (its optional
`known_discrepancies` / `edge_records` attributes), then those attached from records files the user named
(`conformance/user_records.py`, `bnconf report/validate --records`), then the built-ins, each filtered to
the records whose `backends` pattern matches the backend's name. The first record covering a case is the one
applied, so a user's record overrides bnconf's.
"""

from functools import lru_cache

from ..records import EdgeRecord, KnownDiscrepancy, matches
from . import edge, jax, keras, tensorflow, torch

DISCREPANCIES: tuple[KnownDiscrepancy, ...] = torch.ENTRIES + tensorflow.ENTRIES + keras.ENTRIES + jax.ENTRIES
"""Known discrepancies, in lookup order (the first entry covering a case is the one applied)."""

EDGE_RECORDS: tuple[EdgeRecord, ...] = edge.ENTRIES
"""Recorded edge behaviours, in lookup order (the first entry matching an outcome is the one reported)."""

BUILT_IN, BACKEND = "built-in", "backend"
"""Sources of a record: bnconf's registries, the backend's own attributes; else the records file's target."""

# id(backend) -> [backend, [(source, discrepancies, edge records), ...]]: records attached from files (the
# backend is kept, so that its id is not reused while the entry lives)
_ATTACHED: dict[int, list] = {}
_NAMED: dict[str, object] = {}  # name -> the backend of that name registered last


def register(backend) -> list:
    """Note `backend` as one of the run's (`backend_named` finds it, with its own records); its entry."""
    entry = _ATTACHED.setdefault(id(backend), [backend, []])
    if entry[0] is not backend:  # a backend that died and whose id was reused
        _ATTACHED[id(backend)] = entry = [backend, []]
    _NAMED[backend.name] = backend  # the latest registered backend of a name is the one a report means
    return entry


def attach(backend, source: str, discrepancies=(), edge_records=()) -> None:
    """Attach records from `source` (a records file's target) to `backend`; attaching the same source again
    changes nothing. `user_records.attach_records` checks the records first."""
    entry = register(backend)
    if all(s != source for s, _, _ in entry[1]):
        entry[1].append((source, tuple(discrepancies), tuple(edge_records)))


def detach(backend, source: str) -> None:
    """Undo `attach(backend, source, ...)` (records that failed a check after attaching)."""
    entry = _ATTACHED.get(id(backend))
    if entry and entry[0] is backend:
        entry[1][:] = [e for e in entry[1] if e[0] != source]


def attached_sources(backend) -> list[str]:
    """The records files attached to `backend`, in order."""
    entry = _ATTACHED.get(id(backend))
    return [s for s, _, _ in entry[1]] if entry and entry[0] is backend else []


def backend_named(name: str):
    """The backend of that name among those registered or given records (the latest), or None: a report that
    knows only names finds a backend's records through it."""
    return _NAMED.get(name)


@lru_cache(maxsize=256)
def _built_in_for(name: str, index: int) -> tuple:
    """The built-in records (0: discrepancies, 1: edge) whose pattern matches `name` (looked up once per name)."""
    return tuple(r for r in (DISCREPANCIES, EDGE_RECORDS)[index] if matches(name, r.backends))


def _sourced(backend, attribute: str, index: int) -> list[tuple[object, str]]:
    entry = _ATTACHED.get(id(backend))
    files = entry[1] if entry and entry[0] is backend else []
    name = backend.name
    candidates = [(r, BACKEND) for r in tuple(getattr(backend, attribute, None) or ())]
    candidates += [(r, source) for source, *records in files for r in records[index]]
    candidates += [(r, BUILT_IN) for r in _built_in_for(name, index)]
    out, seen = [], set()
    for r, source in candidates:
        if id(r) not in seen and matches(name, r.backends):
            seen.add(id(r))
            out.append((r, source))
    return out


def sourced_discrepancies_for(backend) -> list[tuple[KnownDiscrepancy, str]]:
    """(record, source) for each known discrepancy that applies to `backend`, in lookup order."""
    return _sourced(backend, "known_discrepancies", 0)


def sourced_edge_records_for(backend) -> list[tuple[EdgeRecord, str]]:
    """(record, source) for each recorded edge behaviour that applies to `backend`, in lookup order."""
    return _sourced(backend, "edge_records", 1)


def discrepancies_for(backend) -> tuple[KnownDiscrepancy, ...]:
    """The known discrepancies that apply to `backend`: its own, those attached from records files, then
    bnconf's (each matching its name), in lookup order."""
    return tuple(r for r, _ in sourced_discrepancies_for(backend))


def edge_records_for(backend) -> tuple[EdgeRecord, ...]:
    """The recorded edge behaviours that apply to `backend`, in the same order as `discrepancies_for`."""
    return tuple(r for r, _ in sourced_edge_records_for(backend))


def source_of(record, backend) -> str:
    """Where a record that applies to `backend` comes from: "backend", a records file's target, or "built-in"."""
    for r, source in sourced_discrepancies_for(backend) + sourced_edge_records_for(backend):
        if r is record:
            return source
    return BUILT_IN


__all__ = ["BACKEND", "BUILT_IN", "DISCREPANCIES", "EDGE_RECORDS", "attach", "attached_sources", "detach", "backend_named", "register",
           "discrepancies_for", "edge_records_for", "source_of", "sourced_discrepancies_for", "sourced_edge_records_for"]
