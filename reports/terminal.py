"""Plain-text tables for the terminal (tabulate's "simple" format)."""

import re
import textwrap

from tabulate import tabulate

_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # C0 but tab and line breaks, DEL, C1


def one_line(value) -> str:
    """str(value) on one line and inert on a terminal: every line break becomes a space (a backend's name or
    error message cannot add rows or lines), other control characters (an ANSI escape sequence) show as
    escapes such as \\x1b. The Markdown renderer builds on it."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], _LINE_BREAKS.sub(" ", str(value)))


NO_FIGURE = "\u2014"  # a number with no meaningful value (e.g. a ULP distance where none is defined)


def number(value, digits: int = 3) -> str:
    """A figure for a table: NO_FIGURE for None (no meaningful value), "nan"/"inf" as such, else `digits`
    significant digits."""
    if value is None:
        return NO_FIGURE
    return f"{float(value):.{digits}g}"


def examples_text(judged, drawn) -> str:
    """Examples judged / drawn, NO_FIGURE for a count not recorded."""
    return f"{NO_FIGURE if judged is None else judged}/{NO_FIGURE if drawn is None else drawn}"


def terminal_cell(value) -> str:
    """A table cell: `one_line`, None shows as "-"."""
    return "-" if value is None else one_line(value)


def _header(title, cells: list[str]) -> str:
    """A column title in lines no wider than the column's widest cell, its longest word or half of itself."""
    title = terminal_cell(title)
    width = max([len(c) for c in cells] + [len(word) for word in title.split()] + [-(-len(title) // 2)])
    return textwrap.fill(title, width=width, break_long_words=False)


def table(header: list[str], rows: list[list]) -> str:
    """Left-aligned columns with a rule under the header; every cell through `terminal_cell`, a title longer
    than its column's cells wrapped onto more lines."""
    cells = [[terminal_cell(c) for c in row] for row in rows]
    titles = [_header(h, [row[i] for row in cells if i < len(row)]) for i, h in enumerate(header)]
    return tabulate(cells, headers=titles, tablefmt="simple", disable_numparse=True, stralign="left")
