"""The distributed part of a report as tables: each replica backend at each world size and split pattern
(conformance/replica_results.py: one `ReplicaCell` per backend, world size, split and dtype, one `ReplicaRow`
per quantity: y, running_mean, running_var, dx, dgamma, dbeta).

    matrix(cells)         -> (header, rows)  one row per (backend, device, dtype), one column per world size x
                             split pattern; each entry "conforms", "known (<record id>)", "NON-CONFORMANT (<named
                             mistake>)", "unsupported [k]" / "skipped [k]" (k: a line of `legend_rows`), "CRASHED",
                             "TIMED OUT", "ERROR", or "-" (not in the run); compact (Markdown, terminal): one column
                             per split, its entry over the world sizes ("W=1,2: conforms; W=3: CRASHED" where they
                             differ), and "known [k]" and "NON-CONFORMANT [k]" too, so that the matrix stays small
    legend_rows(cells)    -> the marks: [k], the entries, why (reason, named mistake, record ids), which backends
                             and how many cells
    quantity_rows(cells)  -> QUANTITY_HEADER rows: one per (cell, quantity); cells that did not run folded per
                             (backend, device, reason); a cell that crashed, timed out or raised is one row
    failing_rows(cells)   -> the quantity_rows that are NON-CONFORMANT, CRASHED, TIMED OUT or ERROR
    pair_setting_rows(pairs) -> PAIR_HEADER rows: the synchronized backends against each other, one per pair,
                             world size, split and dtype (conformance/replica_pairs.ReplicaPairResult)
    pair_rows(pairs)      -> PAIR_SUMMARY_HEADER rows: one per pair, its settings and quantity rows counted
    discrepancy_rows(cells) -> DISCREPANCY_HEADER rows: each known-discrepancy record the cells used
                             (ReplicaCell.discrepancies), with its explanation and evidence
    failures(cells)       -> why the distributed part does not conform (empty: it conforms)

A row's verdict is the spec's (spec.Verdict) or "known discrepancy"; conforms, ill-conditioned and known
discrepancy are accepted (ReplicaRow.accepted), any other is shown as "NON-CONFORMANT (<the spec's verdict>)".
Pure functions of the cells and pair results; nothing here runs a backend.
"""

from .terminal import examples_text, number

NON_CONFORMANT = "NON-CONFORMANT"
KNOWN = "known discrepancy"
NOT_RUN = ("unsupported", "skipped")  # a cell the backend cannot express or the run did not select: not a failure
_FAILED = {"crashed": "CRASHED", "timed out": "TIMED OUT", "error": "ERROR"}
UNEXPLAINED = "unexplained"

QUANTITY_HEADER = ["backend", "semantics", "device", "dtype", "world size", "split", "rows per replica", "quantity",
                   "examples judged / drawn", "error / bound", "verdict", "named mistake / why", "observed / expected",
                   "bound", "worst element", "replay"]
QUANTITY_FILTER = (0, QUANTITY_HEADER.index("verdict"))  # (backend, verdict) columns: the HTML filter bar
LEGEND_HEADER = ["mark", "entries", "why", "backends (cells)"]
DISCREPANCY_HEADER = ["id", "backends", "examples covered", "examples that needed it", "status",
                      "what the backend computes instead", "explanation", "evidence"]


def _unique(values) -> list:
    return list(dict.fromkeys(v for v in values if v))


def row_verdict(row) -> str:
    """A quantity's verdict as the tables show it: "conforms", "ill-conditioned", "known discrepancy [<id>]",
    "NON-CONFORMANT (<the spec's verdict>)"."""
    if row.accepted:
        return row.verdict + (f" [{row.known}]" if row.known else "")
    if row.verdict.lower() == NON_CONFORMANT.lower():
        return NON_CONFORMANT
    return f"{NON_CONFORMANT} ({row.verdict})"


def row_why(row) -> str:
    """The named mistake and what was seen (or why the row is ill-conditioned); "unexplained" for a failing row
    with neither."""
    parts = [row.detail] if row.mistake and row.detail.startswith(row.mistake) else [row.mistake, row.detail]
    said = "; ".join(_unique(parts))
    return said or ("" if row.accepted else UNEXPLAINED)


def relative_error(row) -> float | None:
    """|observed - expected| / |expected| at the worst element; None where it has no meaning."""
    if row.observed is None or row.expected is None or row.expected == 0:
        return None
    return abs(row.observed - row.expected) / abs(row.expected)


def rows_text(cell) -> str:
    """The shard sizes: "3+5+0"."""
    return "+".join(str(n) for n in cell.rows_per_replica)


def setting(cell) -> str:
    """World size and split pattern: "W=3 unequal"."""
    return f"W={cell.world_size} {cell.split}"


def where(cell) -> str:
    """Where a finding is: "cpu float32 W=3 unequal (rows 3+5+0)"."""
    return f"{cell.device} {cell.dtype} {setting(cell)} (rows {rows_text(cell)})"


def status_text(cell) -> str:
    return _FAILED.get(cell.status, cell.status if cell.status in NOT_RUN or cell.status == "ran" else cell.status.upper())


def named_mistakes(rows) -> str:
    """The failing rows' named mistakes, else "unexplained: <their quantities>"."""
    bad = [r for r in rows if not r.accepted]
    named = _unique(r.mistake for r in bad)
    return "; ".join(named) if named else f"{UNEXPLAINED}: " + ", ".join(_unique(r.quantity for r in bad))


def _known_ids(cell) -> list[str]:
    return _unique(r.known or (KNOWN if r.verdict == KNOWN else "") for r in cell.rows)


def explanation(cell) -> tuple[str, str] | None:
    """What a matrix entry needs explained, as (kind, text): ("unsupported" | "skipped", the reason),
    ("NON-CONFORMANT", the named mistakes), ("known", the record ids); None for the rest."""
    if cell.status in NOT_RUN:
        return cell.status, cell.reason or cell.status
    if cell.status != "ran":
        return None
    if any(not r.accepted for r in cell.rows):
        return NON_CONFORMANT, named_mistakes(cell.rows)
    known = _known_ids(cell)
    return ("known", ", ".join(known)) if known else None


def cell_text(cell, mark: int | None = None) -> str:
    """One entry of the matrix (see the module docstring). With `mark` (its line in `legend_rows`), what the
    entry needs explained is that line: "unsupported [1]", "NON-CONFORMANT [2]", "known [3]"; else it is said
    in full where short enough to read in a table: "NON-CONFORMANT (<named mistake>)", "known (<id>)"."""
    said = explanation(cell)
    if said is None:
        if cell.status != "ran":
            return status_text(cell)
        return "conforms" if cell.rows else "ran, nothing judged"
    kind, text = said
    if mark:
        return f"{kind} [{mark}]"
    return kind if kind in NOT_RUN else f"{kind} ({text})"


# ---------------------------------------------------------------- the matrix and its legend


def _legend(cells, compact: bool) -> dict[tuple[str, str], int]:
    """(kind, text) -> its mark (1, 2, ...): why cells did not run; compact: also the named mistakes and the
    records of NON-CONFORMANT and known entries."""
    said = [explanation(c) for c in cells]
    return {e: k for k, e in enumerate(_unique(e for e in said if e and (compact or e[0] in NOT_RUN)), 1)}


def columns(cells) -> list[tuple[int, str]]:
    """(world size, split) pairs in the run: by world size, splits in the order they first appear."""
    seen = _unique((c.world_size, c.split) for c in cells)
    order = {s: k for k, s in enumerate(_unique(c.split for c in cells))}
    return sorted(seen, key=lambda ws: (ws[0], order[ws[1]]))


def _by_row(cells) -> tuple[dict[tuple, dict], dict[tuple, str]]:
    """(backend, device, dtype) -> {(world size, split): cell}, and -> its semantics."""
    by: dict[tuple, dict] = {}
    semantics: dict[tuple, str] = {}
    for c in cells:
        key = (c.backend, c.device, c.dtype)
        by.setdefault(key, {}).setdefault((c.world_size, c.split), c)
        semantics[key] = semantics.get(key) or c.semantics
    return by, semantics


def _over_world_sizes(texts: dict[int, str]) -> str:
    """One split's entries over world sizes: the entry when they agree, else "W=1,2: conforms; W=3: ..."."""
    if not texts:
        return "-"
    groups: dict[str, list[str]] = {}
    for w, text in sorted(texts.items()):
        groups.setdefault(text, []).append(str(w))
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"W={','.join(ws)}: {text}" for text, ws in groups.items())


def matrix(cells, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the matrix: backend, semantics, device, dtype, then one column per world size and split.
    `compact` (Markdown, terminal): one column per split, its entry over the world sizes where the split exists
    (one entry where they agree), and NON-CONFORMANT and known entries point to the legend instead of saying it."""
    marks = _legend(cells, compact)
    by, semantics = _by_row(cells)
    text = lambda c: cell_text(c, marks.get(explanation(c)))  # noqa: E731
    if compact:
        splits = _unique(s for _, s in columns(cells))
        header = ["backend", "semantics", "device", "dtype", *splits]
        entries = {key: [_over_world_sizes({w: text(c) for (w, s), c in found.items() if s == split})
                         for split in splits] for key, found in by.items()}
    else:
        cols = columns(cells)
        header = ["backend", "semantics", "device", "dtype", *(f"W={w} {s}" for w, s in cols)]
        entries = {key: [text(found[ws]) if ws in found else "-" for ws in cols] for key, found in by.items()}
    rows = [[key[0], semantics[key] or "-", key[1], key[2], *entries[key]] for key in by]
    return header, (_dtypes_merged(rows) if compact else rows)


def _dtypes_merged(rows: list[list]) -> list[list]:
    """Consecutive rows of one backend and device whose entries agree in every column, as one row naming their
    dtypes ("float32, float64")."""
    out: list[list] = []
    for row in rows:
        last = out[-1] if out else None
        if last is not None and last[:3] == row[:3] and last[4:] == row[4:]:
            last[3] = f"{last[3]}, {row[3]}"
        else:
            out.append(list(row))
    return out


def legend_rows(cells, compact: bool = False) -> list[list[str]]:
    """The matrix's marks: [k], the entries it stands for, why (the reason a cell did not run; compact: also
    the named mistakes, the record ids), and the backends with how many cells."""
    marks = _legend(cells, compact)
    counts: dict[tuple[str, str], dict[str, int]] = {e: {} for e in marks}
    for c in cells:
        said = explanation(c)
        if said in counts:
            counts[said][c.backend] = counts[said].get(c.backend, 0) + 1
    return [[f"[{k}]", kind, text, _backends_text(counts[(kind, text)])] for (kind, text), k in marks.items()]


LEGEND_BACKENDS = 3  # backends named per mark; the rest counted


def _backends_text(counts: dict[str, int]) -> str:
    """"a (3), b (1)", at most LEGEND_BACKENDS named: "a (3), b (1), c (1) and 8 more backends (8 cells)"."""
    named = ", ".join(f"{b} ({n})" for b, n in list(counts.items())[:LEGEND_BACKENDS])
    rest = list(counts.values())[LEGEND_BACKENDS:]
    return named + (f" and {len(rest)} more backends ({sum(rest)} cells)" if rest else "")


# ---------------------------------------------------------------- one row per quantity


def _row(cell, row) -> list:
    failing = not row.accepted
    seen = "" if row.observed is None and row.expected is None else f"{number(row.observed, 6)} / {number(row.expected, 6)}"
    return [cell.backend, cell.semantics, cell.device, cell.dtype, cell.world_size, cell.split, rows_text(cell),
            row.quantity, examples_text(row.judged, row.examples), number(row.max_ratio), row_verdict(row), row_why(row),
            seen, number(row.bound) if row.bound is not None else "", row.worst, cell.replay if failing else ""]


def quantity_rows(cells) -> list[list]:
    """One row per (cell, quantity) in QUANTITY_HEADER's columns; cells that did not run folded per backend,
    device and reason (their dtypes, world sizes and splits listed)."""
    out: list[list] = []
    folded: dict[tuple, list] = {}
    for c in cells:
        if c.status in NOT_RUN:
            key = (c.backend, c.device, c.reason or c.status)
            if key not in folded:
                folded[key] = [c.backend, c.semantics, c.device, [], [], [], "", "-", "", "", c.status, c.reason, "",
                               "", "", ""]
                out.append(folded[key])
            for k, value in ((3, c.dtype), (4, c.world_size), (5, c.split)):
                if value not in folded[key][k]:
                    folded[key][k].append(value)
            continue
        if c.status != "ran":
            out.append([c.backend, c.semantics, c.device, c.dtype, c.world_size, c.split, rows_text(c), "-", "", "",
                        status_text(c), c.reason, "", "", "", c.replay])
        out += [_row(c, r) for r in c.rows]
    for row in folded.values():
        row[3:6] = [", ".join(map(str, values)) for values in row[3:6]]
    return out


def failing_rows(cells) -> list[list]:
    """The rows of `quantity_rows` a reader has to act on: NON-CONFORMANT quantities, cells that did not finish."""
    bad = tuple(_FAILED.values()) + (NON_CONFORMANT,)
    return [r for r in quantity_rows([c for c in cells if c.status not in NOT_RUN]) if str(r[10]).startswith(bad)]


def failures(cells) -> list[str]:
    """Why the distributed part does not conform: each cell that crashed, timed out or raised, each
    NON-CONFORMANT quantity (empty: it conforms)."""
    out = []
    for c in cells:
        at = f"{c.backend} {c.device} {c.dtype} {setting(c)}"
        if c.failed:
            out.append(f"{at}: {c.status}")
        out += [f"{at} {r.quantity}: {row_verdict(r)}" for r in c.rows if not r.accepted]
    return out


def counts(cells) -> dict[str, int]:
    """Cells per outcome: selected, ran, conform (every row accepted, none covered by a record), known (every
    row accepted, some by a record), non_conformant, failed (crashed, timed out, raised), not_run."""
    out = dict.fromkeys(("selected", "ran", "conform", "known", "non_conformant", "failed", "not_run"), 0)
    for c in cells:
        out["selected"] += 1
        if c.status in NOT_RUN:
            out["not_run"] += 1
            continue
        out["ran"] += 1
        text = cell_text(c)
        kind = ("failed" if c.failed or c.status != "ran" else "non_conformant" if text.startswith(NON_CONFORMANT)
                else "known" if text.startswith("known") else "conform")
        out[kind] += 1
    return out


# ---------------------------------------------------------------- synchronized implementations against each other

# conformance/crosscheck.py's verdicts and the mark replica_pairs.py puts on a record's name (not imported: the
# conformance engine is not needed to render a report)
MATCHES, PREDICTED, UNEXPECTED = "matches after translation", "differs as the spec predicts", "UNEXPECTED difference"
RECORDED_MARK = " as recorded in "
RECORDED = "differs as recorded"
PAIR_KINDS = (MATCHES, PREDICTED, RECORDED, UNEXPECTED)  # a quantity row's kind, in the tables' column order
PAIR_HEADER = ["backend A", "backend B", "W", "split", "dtype", "status", *PAIR_KINDS,
               "where they differ (largest relative difference; residual or record)"]
PAIR_SUMMARY_HEADER = ["backend A", "backend B", "verdict", "settings run", "not comparable", "errors", *PAIR_KINDS]
PAIR_COMPACT_HEADER = ["backend A", "backend B", "verdict", "settings run / not comparable / error",
                       "rows matching / predicted / recorded / UNEXPECTED"]
PAIR_VERDICTS = (UNEXPECTED, "error", RECORDED, PREDICTED, MATCHES, "not comparable")  # worst first


def pair_kind(row) -> str:
    """A quantity row's kind: matches, differs as the spec predicts (a residual of the translation), differs as
    recorded (a known replica record stands in for a side's declared behaviour), UNEXPECTED."""
    if row.verdict == PREDICTED and RECORDED_MARK in (row.residuals or ""):
        return RECORDED
    return row.verdict


def _kind_counts(rows) -> list[int]:
    kinds = [pair_kind(r) for r in rows]
    return [kinds.count(k) for k in PAIR_KINDS]


def _differences(p) -> str:
    """The quantities of one setting that do not simply match: "running_var: differs as the spec predicts
    (0.032; running variance estimator (predicted 0.0323 relative at n=32))"."""
    return "; ".join(f"{r.quantity}: {pair_kind(r)} ({number(r.max_relative)}" + (f"; {r.residuals})" if r.residuals else ")")
                     for r in p.rows or [] if r.verdict != MATCHES)


def pair_setting_rows(pairs) -> list[list]:
    """PAIR_HEADER rows: one per pair and setting (conformance/replica_pairs.ReplicaPairResult), quantity rows
    counted per kind, what differs named; a setting that did not run shows its reason."""
    return [[p.source, p.target, p.world_size or "-", p.split, p.dtype, p.status, *_kind_counts(p.rows or []),
             _differences(p) if p.status == "ran" else p.reason] for p in pairs]


def pair_rows(pairs, compact: bool = False) -> list[list]:
    """PAIR_SUMMARY_HEADER rows: one per pair of synchronized backends over its settings: the worst verdict
    (UNEXPECTED or error first, then recorded, predicted, matches; not comparable when no setting ran),
    settings run / not comparable / errors, and the quantity rows per kind; `compact` (Markdown, terminal):
    PAIR_COMPACT_HEADER rows, the counts joined ("4/0/0", "12/2/10/0")."""
    by: dict[tuple[str, str], list] = {}
    for p in pairs:
        by.setdefault((p.source, p.target), []).append(p)
    out = []
    for (a, b), settings in by.items():
        rows = [r for p in settings for r in p.rows or []]
        status = [p.status for p in settings]
        counts = _kind_counts(rows)
        present = set(pair_kind(r) for r in rows) | ({"error"} if "error" in status else set())
        verdict = next((v for v in PAIR_VERDICTS if v in present), "not comparable")
        settings_counts = [status.count("ran"), status.count("not comparable"), status.count("error")]
        out.append([a, b, verdict, "/".join(map(str, settings_counts)), "/".join(map(str, counts))] if compact
                   else [a, b, verdict, *settings_counts, *counts])
    return out


# ---------------------------------------------------------------- the records that explain differences


def _records() -> dict[str, object]:
    """The built-in replica records by id (conformance/known/replicas.py)."""
    from ..conformance.known.replicas import ENTRIES

    return {r.id: r for r in ENTRIES}


def discrepancy_rows(cells) -> list[list]:
    """Each record that covered an example of the run, from the cells' (covered, needed) counts: "in use" when
    some example needed it (the declared semantics failed there and the recorded behaviour held), STALE when it
    covered examples and none needed it (the backend changed: update the record). Explanation and evidence from
    the built-in record of that id; a backend's own record is named as such."""
    uses: dict[str, list] = {}  # id -> [backends, covered, needed]
    for c in cells:
        for rid, (covered, needed) in (getattr(c, "discrepancies", None) or {}).items():
            use = uses.setdefault(rid, [[], 0, 0])
            use[0] += [] if c.backend in use[0] else [c.backend]
            use[1] += covered
            use[2] += needed
    records = _records() if uses else {}
    out = []
    for rid, (backends, covered, needed) in uses.items():
        if not covered:
            continue
        r = records.get(rid)
        status = "in use" if needed else f"STALE: covered {covered} example(s), none needed it"
        evidence = (f"{r.evidence} ({r.source})" if r.source else r.evidence) if r else ""
        out.append([rid, ", ".join(backends), covered, needed, status, r.hypothesis if r else "",
                    r.explanation if r else "the backend's own record (its known_discrepancies)", evidence])
    return out
