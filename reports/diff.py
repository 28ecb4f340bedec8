"""What changed between two report JSONs (`bnconf diff OLD.json NEW.json`): for a framework upgrade's CI,
run the report before and after, diff, and fail (exit 1) when NEW has a regression.

Results are matched by identity, never by position:
    battery cell      (backend, device, dtype, mode)            its status ("ran", "error", "crashed", ...)
    battery row       (backend, device, dtype, mode, quantity)  its verdict
    edge case         (backend, device, dtype, case, mode)      agrees / differs as recorded / DIFFERS
    convention        (backend, property, dtype)                its inference verdict (bnconf validate)
    pair              (source, target, mode[, quantity])        its status, its rows' verdicts
    distributed cell  (backend, world size, split, dtype, device)            its status
    distributed row   (backend, world size, split, dtype, device, quantity)  its verdict
    record            its id (known discrepancies and edge records)          in use / STALE / not reached
    version           an "environment" key (python, numpy, each framework)

A regression is anything newly failing in NEW: a row newly NON-CONFORMANT, a cell newly raising or crashing,
an edge case newly DIFFERS unrecorded, a pair newly UNEXPECTED or failing, a distributed cell or row newly
failing (each also when it is absent from OLD: a new backend that fails is a failure), and cells that ran in
OLD but are missing from NEW (a backend no longer installed or selected is no longer verified). Records,
versions and verdict changes between accepted verdicts are reported, never a regression. Keys a report was
written without (an older bnconf: no "replicas", no "edge") compare as absent.
"""

from collections import Counter
from dataclasses import dataclass, field

REGRESSION, FIXED, RECORDS, VERSIONS, OTHER = "regression", "fixed", "records", "versions", "other"


@dataclass(frozen=True)
class Section:
    """A group of changes in the output, in this order."""

    title: str
    kind: str  # REGRESSION, FIXED, RECORDS, VERSIONS or OTHER
    hint: str = ""  # what it means or what to do, after the count


CELLS_FAILING = Section("cells newly failing", REGRESSION, "raised, crashed, timed out or out of memory")
ROWS_FAILING = Section("rows newly NON-CONFORMANT", REGRESSION)
CELLS_GONE = Section("cells missing from NEW", REGRESSION,
                    "they ran in OLD: a backend no longer installed or selected is no longer verified")
EDGE_FAILING = Section("edge cases newly DIFFERS", REGRESSION)
INFERRED_FAILING = Section("convention properties newly DIFFERS", REGRESSION)
PAIRS_FAILING = Section("cross-framework pairs newly UNEXPECTED or failing", REGRESSION)
REPLICA_CELLS_FAILING = Section("distributed cells newly failing", REGRESSION)
REPLICA_ROWS_FAILING = Section("distributed rows newly failing", REGRESSION)
REPLICA_CELLS_GONE = Section("distributed cells missing from NEW", REGRESSION, "they ran in OLD")
CELLS_FIXED = Section("cells fixed", FIXED)
ROWS_FIXED = Section("rows newly conformant", FIXED)
EDGE_FIXED = Section("edge cases newly agreeing", FIXED, "or differing as a record explains")
INFERRED_FIXED = Section("convention properties newly agreeing", FIXED)
PAIRS_FIXED = Section("cross-framework pairs fixed", FIXED)
REPLICA_CELLS_FIXED = Section("distributed cells fixed", FIXED)
REPLICA_ROWS_FIXED = Section("distributed rows fixed", FIXED)
RECORDS_STALE = Section("records gone stale", RECORDS, "they covered cases and none needed them: narrow or remove them")
RECORDS_UNNEEDED = Section("records no longer needed", RECORDS, "no case of NEW reached them")
RECORDS_NEEDED = Section("records newly needed", RECORDS)
VERSION_CHANGES = Section("framework versions", VERSIONS)
VERDICT_CHANGES = Section("other changes", OTHER, "neither state fails: e.g. conforms -> known discrepancy")
SECTIONS = (CELLS_FAILING, ROWS_FAILING, CELLS_GONE, EDGE_FAILING, INFERRED_FAILING, PAIRS_FAILING,
            REPLICA_CELLS_FAILING, REPLICA_ROWS_FAILING, REPLICA_CELLS_GONE, CELLS_FIXED, ROWS_FIXED, EDGE_FIXED,
            INFERRED_FIXED, PAIRS_FIXED, REPLICA_CELLS_FIXED, REPLICA_ROWS_FIXED, RECORDS_STALE, RECORDS_UNNEEDED,
            RECORDS_NEEDED, VERSION_CHANGES, VERDICT_CHANGES)
ABSENT = "absent"


@dataclass(frozen=True)
class Change:
    section: Section
    where: str  # the identity, as text
    old: str  # the state in OLD ("absent": not in OLD)
    new: str
    detail: str = ""  # for a regression: how bad, the diagnosis, the replay line


@dataclass
class Diff:
    old_name: str
    new_name: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # why the comparison may mislead: seeds, examples, partial runs

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.section.kind == REGRESSION]

    def of(self, section: Section) -> list[Change]:
        return [c for c in self.changes if c.section == section]

    def count(self, kind: str) -> int:
        return sum(c.section.kind == kind for c in self.changes)


# ---------------------------------------------------------------- one state per identity


@dataclass(frozen=True)
class State:
    """A result's state: `bad` (failing), the text shown, and what a failure's line adds."""

    bad: bool
    text: str
    detail: str = ""


def _where(*parts) -> str:
    return " ".join(str(p) for p in parts if p not in (None, ""))


def _ratio(value) -> str:
    return f"error/bound {value:.3g}" if isinstance(value, (int, float)) else (f"error/bound {value}" if value else "")


def _detail(*parts) -> str:
    return "; ".join(p for p in parts if p)


def battery_cells(doc: dict) -> dict:
    """(backend, device, dtype, mode) -> State of the cell's status."""
    out = {}
    for c in doc.get("cells", []):
        status = str(c.get("status", "ran"))
        out[(c.get("backend"), c.get("device"), c.get("dtype"), c.get("mode"))] = State(
            status not in ("ran", "unsupported"), status.upper() if status not in ("ran", "unsupported") else status,
            c.get("reason", "") if status not in ("ran", "unsupported") else "")
    return out


def battery_rows(doc: dict) -> dict:
    """(backend, device, dtype, mode, quantity) -> State of the row's verdict."""
    out = {}
    for c in doc.get("cells", []):
        for r in c.get("rows", []):
            verdict = str(r.get("verdict", "conforms"))
            bad = verdict == "NON-CONFORMANT"
            text = f"{verdict} ({r['failure']})" if bad and r.get("failure") else verdict
            detail = _detail(_ratio(r.get("max_ratio")), r.get("diagnosis", ""), r.get("replay", "")) if bad else ""
            out[(c.get("backend"), c.get("device"), c.get("dtype"), c.get("mode"), r.get("quantity"))] = State(
                bad, text, detail)
    return out


def edge_cases(doc: dict) -> dict:
    """(backend, device, dtype, case, mode) -> agrees / differs as recorded / DIFFERS (an unrecorded difference)."""
    out = {}
    for r in doc.get("edge", []):
        if r.get("agrees", True):
            state = State(False, "agrees")
        elif r.get("recorded"):
            state = State(False, f"differs as recorded [{r['recorded']}]")
        else:
            state = State(True, "DIFFERS", str(r.get("outcome", "")))
        out[(r.get("backend"), r.get("device"), r.get("dtype"), r.get("case"), r.get("mode"))] = state
    return out


def inferred(doc: dict) -> dict:
    """(backend, property, dtype) -> the convention inference's verdict (run.inference_failures' rule)."""
    out = {}
    for r in doc.get("inferred", []):
        verdict = str(r.get("verdict", "agrees"))
        bad = not (verdict == "agrees" or verdict.startswith("differs as recorded"))
        out[(r.get("backend"), r.get("property"), r.get("dtype", ""))] = State(
            bad, verdict, r.get("replay", "") if bad else "")
    return out


def pairs(doc: dict) -> dict:
    """(source, target, mode, quantity or "-") -> the pair's status ("-") or a row's verdict."""
    out = {}
    for p in doc.get("pairs", []):
        status = str(p.get("status", "ran"))
        out[(p.get("source"), p.get("target"), p.get("mode"), "-")] = State(
            status == "error", status, p.get("reason", "") if status == "error" else "")
        for r in p.get("rows") or []:
            verdict = str(r.get("verdict", ""))
            bad = verdict.startswith("UNEXPECTED")
            out[(p.get("source"), p.get("target"), p.get("mode"), r.get("quantity"))] = State(
                bad, verdict, _detail(f"max relative {r.get('max_relative')}", r.get("residuals", "")) if bad else "")
    return out


def _replica_key(c: dict) -> tuple:
    return (c.get("backend"), f"world size {c.get('world_size')}", c.get("split"), c.get("dtype"), c.get("device", "cpu"))


def replica_cells(doc: dict) -> dict:
    """(backend, world size, split, dtype, device) -> the distributed cell's status."""
    out = {}
    for c in doc.get("replicas") or []:
        status = str(c.get("status", "ran"))
        bad = status in ("crashed", "timed out", "error")
        out[_replica_key(c)] = State(bad, status.upper() if bad else status,
                                     _detail(c.get("reason", ""), c.get("replay", "")) if bad else "")
    return out


def replica_rows(doc: dict) -> dict:
    """(backend, world size, split, dtype, device, quantity) -> the distributed row's verdict."""
    out = {}
    for c in doc.get("replicas") or []:
        for r in c.get("rows", []):
            verdict = str(r.get("verdict", "conforms"))
            bad = verdict not in ("conforms", "ill-conditioned", "known discrepancy")
            out[(*_replica_key(c), r.get("quantity"))] = State(
                bad, verdict, _detail(_ratio(r.get("max_ratio")), r.get("mistake", ""), c.get("replay", "")) if bad else "")
    return out


def records(doc: dict) -> dict:
    """record id -> "in use" / "STALE" / "not reached" (known discrepancies and edge records alike)."""
    out = {}
    for r in list(doc.get("discrepancies", [])) + list(doc.get("edge_records", [])):
        status = str(r.get("status", ""))
        word = "STALE" if status.startswith("STALE") else "in use" if status.startswith("in use") else "not reached"
        out[r.get("id")] = State(False, word, status)
    return out


# ---------------------------------------------------------------- comparing


def _compare(old: dict, new: dict, failing: Section, fixed: Section, changes: list) -> None:
    """A change for every identity whose state got worse (`failing`, also when absent from OLD), better
    (`fixed`), or changed between accepted states (VERDICT_CHANGES)."""
    for key, now in new.items():
        before = old.get(key)
        where = _where(*key)
        if now.bad and (before is None or not before.bad):
            changes.append(Change(failing, where, before.text if before else ABSENT, now.text, now.detail))
        elif before is not None and before.bad and not now.bad:
            changes.append(Change(fixed, where, before.text, now.text))
        elif before is not None and not before.bad and not now.bad and before.text != now.text:
            changes.append(Change(VERDICT_CHANGES, where, before.text, now.text))


def _gone(old: dict, new: dict, section: Section, changes: list) -> None:
    """Cells that ran in OLD and are missing from NEW, one change per backend."""
    missing = Counter(key[0] for key, state in old.items() if key not in new and state.text == "ran")
    for backend, n in missing.items():
        changes.append(Change(section, str(backend), f"{n} cell(s) ran", ABSENT))


def _records(old: dict, new: dict, changes: list) -> None:
    for key in dict.fromkeys([*old, *new]):
        before = old.get(key, State(False, ABSENT)).text
        now = new.get(key, State(False, ABSENT)).text
        if now == before:
            continue
        if now == "STALE":
            changes.append(Change(RECORDS_STALE, str(key), before, now, new[key].detail))
        elif before == "in use":
            changes.append(Change(RECORDS_UNNEEDED, str(key), before, now))
        elif now == "in use":
            changes.append(Change(RECORDS_NEEDED, str(key), before, now))


def _versions(old: dict, new: dict, changes: list) -> None:
    before, now = old.get("environment") or {}, new.get("environment") or {}
    for key in sorted((set(before) | set(now)) - {"host"}):  # the machine is a note, not a version
        if before.get(key) != now.get(key):
            changes.append(Change(VERSION_CHANGES, key, str(before.get(key, ABSENT)), str(now.get(key, ABSENT))))


def _notes(old: dict, new: dict, names: tuple[str, str]) -> list[str]:
    """What makes the comparison less than like for like; the reports are compared all the same."""
    notes = []
    for key, what in (("seed", "seeds"), ("examples", "examples per cell")):
        if old.get(key) != new.get(key):
            notes.append(f"different {what} ({old.get(key)} in OLD, {new.get(key)} in NEW): other examples were drawn, "
                         "so a change can be chance as well as the backend; compared all the same")
    hosts = [(doc.get("environment") or {}).get("host") for doc in (old, new)]
    if all(hosts) and hosts[0] != hosts[1]:
        notes.append(f"made on different machines ({hosts[0]} for OLD, {hosts[1]} for NEW)")
    if (old.get("shard") or "") != (new.get("shard") or ""):
        notes.append(f"different shards ({old.get('shard') or 'all cells'} in OLD, {new.get('shard') or 'all cells'} "
                     "in NEW): cells only in one of them are listed as missing or new")
    for name, doc in zip(names, (old, new)):
        if doc.get("status", "complete") != "complete":
            notes.append(f"{name} is a partial report (status {doc.get('status')}): results it lacks compare as absent")
    added = Counter(key[0] for key in battery_cells(new).keys() - battery_cells(old).keys())
    if added:
        notes.append("NEW has cells OLD lacks: " + ", ".join(f"{b} ({n})" for b, n in sorted(added.items(), key=str)))
    return notes


def diff(old: dict, new: dict, old_name: str = "OLD", new_name: str = "NEW") -> Diff:
    """Every change from report document `old` to `new` (dicts as report_file.read_report gives them)."""
    changes: list[Change] = []
    old_cells, new_cells = battery_cells(old), battery_cells(new)
    _compare(old_cells, new_cells, CELLS_FAILING, CELLS_FIXED, changes)
    _compare(battery_rows(old), battery_rows(new), ROWS_FAILING, ROWS_FIXED, changes)
    _gone(old_cells, new_cells, CELLS_GONE, changes)
    _compare(edge_cases(old), edge_cases(new), EDGE_FAILING, EDGE_FIXED, changes)
    _compare(inferred(old), inferred(new), INFERRED_FAILING, INFERRED_FIXED, changes)
    _compare(pairs(old), pairs(new), PAIRS_FAILING, PAIRS_FIXED, changes)
    old_replicas, new_replicas = replica_cells(old), replica_cells(new)
    _compare(old_replicas, new_replicas, REPLICA_CELLS_FAILING, REPLICA_CELLS_FIXED, changes)
    _compare(replica_rows(old), replica_rows(new), REPLICA_ROWS_FAILING, REPLICA_ROWS_FIXED, changes)
    _gone(old_replicas, new_replicas, REPLICA_CELLS_GONE, changes)
    _records(records(old), records(new), changes)
    _versions(old, new, changes)
    order = {s: i for i, s in enumerate(SECTIONS)}
    changes.sort(key=lambda c: order[c.section])  # stable: within a section, the NEW report's order
    return Diff(old_name, new_name, changes, _notes(old, new, (old_name, new_name)))
