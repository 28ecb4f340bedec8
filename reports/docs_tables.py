"""The documentation tables that are data: SPEC.md §2.1 (each framework's convention) and README's adapters
table, generated from the family entries (`adapters/families.py`), the convention records
(`spec/conventions.py`) and the known-discrepancy registries (`conformance/known/`).

Each table sits in its document between a begin marker and `<!-- end generated -->`; only that span is
ever rewritten. `tests/test_docs_tables.py` fails when a document differs from what this module produces.

    python -m bnconf.reports.docs_tables           say which documents are out of date (exit 1 if any)
    python -m bnconf.reports.docs_tables --write   rewrite the generated spans in place

Imports no framework.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..adapters.families import ALL_DTYPES, FAMILIES, RECORDED, ConventionRow, Family
from ..conformance.known import DISCREPANCIES, EDGE_RECORDS
from ..conformance.records import matches
from ..spec.conventions import CONVENTIONS, Convention, EpsPlacement, MomentumStyle, Variance

REGENERATE = "python -m bnconf.reports.docs_tables --write"
END = "<!-- end generated -->"


@dataclass(frozen=True)
class Block:
    """A generated span: the document it lives in (relative to the repository root) and its begin marker."""

    document: str
    begin: str


CONVENTION_TABLE = Block("spec/SPEC.md", f"<!-- generated: convention table ({REGENERATE}) -->")
ADAPTERS_TABLE = Block("README.md", f"<!-- generated: adapters table ({REGENERATE}) -->")
REPLICA_TABLE = Block("README.md", f"<!-- generated: replica table ({REGENERATE}) -->")


def repository_root() -> Path:
    """The checkout this module runs from (bnconf is installed editable there: reports/ is its top)."""
    return Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- cells


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _number(value: float | None, absent: str) -> str:
    """`absent` for None; a power-of-ten-like eps as 1e-5, anything else as %g."""
    if value is None:
        return absent
    short = f"{value:.0e}"
    if 0 < value < 0.01 and float(short) == value:
        mantissa, exponent = short.split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:g}"


def _axis(axis: int) -> str:
    return f"−{-axis}" if axis < 0 else str(axis)


def _ranks(ranks: tuple[int, ...]) -> str:
    r = sorted(ranks)
    if len(r) > 2 and r == list(range(r[0], r[-1] + 1)):
        return f"{r[0]}–{r[-1]}"
    return ", ".join(map(str, r))


def _momentum(c: Convention) -> str:
    if not c.tracks_running_stats:
        return "none: no running statistics"
    style = "new-weight" if c.momentum_style is MomentumStyle.NEW_WEIGHT else "old-weight"
    parts = [f"{_number(c.default_momentum, 'required')} ({style})"]
    if c.cumulative_average:
        parts.append("`None` = cumulative 1/t")
    if c.zero_debias:
        parts.append("**zero-debiased**")
    return "; ".join(parts)


def _running_variance(c: Convention) -> str:
    if not c.tracks_running_stats:
        text = "none kept"
    elif c.running_var is Variance.UNBIASED and c.bessel_divisor_min:
        text = f"unbiased, `n/max(n−1, {c.bessel_divisor_min})`"
    else:
        text = c.running_var.value
    if c.normalize_with is not Variance.BIASED:
        text += f"; **normalizes with the {c.normalize_with.value} variance**"
    if c.untracked_eval_uses_batch_stats:
        text += "; untracked eval uses batch statistics"
    return text


def _eps(c: Convention) -> str:
    form = "`1/sqrt(var+eps)`" if c.eps_placement is EpsPlacement.INSIDE_SQRT else "`1/(sqrt(var)+eps)`"
    return form + (f", eps ≥ {c.eps_min:g}" if c.eps_min else ", no clamp")


def _link(url: str) -> str:
    return f"[{Path(urlsplit(url).path).name}]({url})"


def convention_cells(c: Convention) -> dict[str, str]:
    """The columns of §2.1 that are fields of the record."""
    return {
        "default eps": _number(c.default_eps, "required"),
        "default momentum (style)": _momentum(c),
        "running variance": _running_variance(c),
        "eps": _eps(c),
        "channel axis": _axis(c.channel_axis),
    }


def _row(row: ConventionRow) -> str:
    records = [CONVENTIONS[name] for name in row.conventions]
    first = records[0]
    cells = [
        _cell(row.api or first.api),
        ", ".join(f"`{_cell(r.name)}`" for r in records),
        *map(_cell, convention_cells(first).values()),
        _cell(" / ".join(_ranks(r.ranks) for r in records)),
        _cell(row.variance_algorithm),
        _cell(row.half_precision),
        ", ".join(_link(u) for u in dict.fromkeys([*(r.source_url for r in records), *row.links])),
    ]
    return "| " + " | ".join(cells) + " |"


def _versions(families) -> str:
    pairs = dict.fromkeys(p for f in families for p in f.frameworks)
    return ", ".join(f"{name} {version}" for name, version in pairs)


# ---------------------------------------------------------------------------------------- the tables


def convention_table() -> str:
    """SPEC.md §2.1's generated span: the versions checked and one row per API."""
    lines = [
        f"Read in the installed versions' sources ({_versions(RECORDED)}) and probed with small CPU runs;",
        "each record names the file and function it was read from, and its notes (`bnconf conventions`) say what",
        "the table leaves out. The first check of the records is in",
        "[`evidence/conventions_check.md`](evidence/conventions_check.md); every built-in adapter's record is",
        "checked again by the convention inference (`tests/conformance/test_inference.py`). One row per API, in",
        "the order of the families in `adapters/families.py`; a record several families implement (the own",
        "CUDA kernel declares PyTorch's functional convention) has a row per implementation.",
        "",
        "| API | record | default eps | default momentum (style) | running variance | eps | channel axis "
        "| ranks | batch-variance algorithm | half precision | source |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(row) for f in RECORDED for row in f.rows]
    return "\n".join(lines) + "\n"


def records_of(f: Family, registry) -> list:
    """The records of `registry` (known discrepancies or edge records) that cover one of `f`'s backends."""
    return [r for r in registry if any(matches(name, r.backends) for name in f.backend_names)]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _found(f: Family) -> str:
    known = len(records_of(f, DISCREPANCIES))
    edge = len(records_of(f, EDGE_RECORDS))
    where = []
    if known:
        where.append(f"{_count(known, 'known discrepancy', 'known discrepancies')} in `known/{f.known}.py`")
    if edge:
        where.append(f"{_count(edge, 'edge behaviour', 'edge behaviours')} in `known/edge.py`")
    return _cell(f.found) + (f" ({', '.join(where)})" if where else "")


def _family_cell(f: Family) -> str:
    versions = _versions([f])
    return _cell(f"{f.title} (`[{f.extra}]`" + (f"; {versions})" if versions else ")"))


def _dtypes(f: Family) -> str:
    return "all four" if set(f.dtypes) == set(ALL_DTYPES) else ", ".join(d for d in ALL_DTYPES if d in f.dtypes)


def adapters_table() -> str:
    """README's generated span: one row per built-in family."""
    lines = [
        "| family | backends | dtypes | what the battery found (recorded in `conformance/known/`) |",
        "|---|---|---|---|",
    ]
    for f in FAMILIES:
        backends = _cell(f.apis) + "; declares " + ", ".join(f"`{_cell(c)}`" for c in f.conventions)
        lines.append(f"| {_family_cell(f)} | {backends} | {_dtypes(f)} | {_found(f)} |")
    return "\n".join(lines) + "\n"


def _shards(r) -> str:
    """Which splits the API can express: unequal and empty shards, or the reason it cannot (its record's)."""
    if r.unequal_shards is None and r.empty_shard is None:
        return "unequal and empty"
    return "equal only (no mask)" if r.unequal_shards == r.empty_shard else (
        f"unequal: {'yes' if r.unequal_shards is None else 'no'}; empty: {'yes' if r.empty_shard is None else 'no'}")


def replica_table() -> str:
    """README's generated span: one row per replica convention record (spec/replica_conventions.py)."""
    from ..spec.replica_conventions import REPLICA_CONVENTIONS

    lines = [
        "| record | API | statistics | combine | running statistics after a step | shards |",
        "|---|---|---|---|---|---|",
    ]
    for r in REPLICA_CONVENTIONS.values():
        combine = r.combine.value if r.combine else "none (each replica its own)"
        lines.append(f"| `{_cell(r.name)}` | {_cell(r.api)} | {r.semantics.value} | {_cell(combine)} | "
                     f"{r.running.value} | {_shards(r)} |")
    return "\n".join(lines) + "\n"


GENERATORS = {CONVENTION_TABLE: convention_table, ADAPTERS_TABLE: adapters_table, REPLICA_TABLE: replica_table}


# ---------------------------------------------------------------------------------------- documents


class MarkerError(ValueError):
    """A document without exactly one begin marker followed by an end marker."""


def regenerated(text: str, block: Block, body: str) -> str:
    """`text` with the span after `block.begin` (up to the next end marker) replaced by `body`."""
    if text.count(block.begin) != 1:
        raise MarkerError(f"{block.document}: expected the marker {block.begin!r} once, found it "
                          f"{text.count(block.begin)} times")
    head, rest = text.split(block.begin, 1)
    if END not in rest:
        raise MarkerError(f"{block.document}: no {END!r} after {block.begin!r}")
    _, tail = rest.split(END, 1)
    return f"{head}{block.begin}\n{body}{END}{tail}"


def _documents(root: Path):
    """(document, path, its text now, its text with every generated span regenerated), per document."""
    for document in dict.fromkeys(b.document for b in GENERATORS):
        path = root / document
        text = path.read_text(encoding="utf-8")
        new = text
        for block, generate in GENERATORS.items():
            if block.document == document:
                new = regenerated(new, block, generate())
        yield document, path, text, new


def stale(root: Path | None = None) -> dict[str, str]:
    """document -> unified diff (current -> generated), for each document whose generated spans are out of date."""
    out: dict[str, str] = {}
    for document, _, text, new in _documents(root or repository_root()):
        if new != text:
            out[document] = "".join(difflib.unified_diff(
                text.splitlines(keepends=True), new.splitlines(keepends=True), f"{document} (now)",
                f"{document} (generated)"))
    return out


def write(root: Path | None = None) -> list[str]:
    """Rewrite the generated spans in place; the documents that changed."""
    changed = []
    for document, path, text, new in _documents(root or repository_root()):
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(document)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnconf.reports.docs_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated spans of SPEC.md and README.md")
    args = parser.parse_args(argv)
    try:
        if args.write:
            changed = write()
            print("rewrote " + ", ".join(changed) if changed else "up to date")
            return 0
        diffs = stale()
    except (OSError, MarkerError) as e:
        print(f"docs_tables: error: {e}", file=sys.stderr)
        return 2
    for diff in diffs.values():
        sys.stdout.write(diff)
    if diffs:
        print(f"out of date: {', '.join(diffs)}; regenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
