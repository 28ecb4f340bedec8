"""Plain-text tables for the terminal (tabulate's "simple" format)."""

import re

from tabulate import tabulate

_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # C0 but tab and line breaks, DEL, C1


def one_line(value) -> str:
    """str(value) on one line and inert on a terminal: every line break becomes a space (a backend's name or
    error message cannot add rows or lines), other control characters (an ANSI escape sequence) show as
    escapes such as \\x1b. The Markdown renderer builds on it."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], _LINE_BREAKS.sub(" ", str(value)))


def terminal_cell(value) -> str:
    """A table cell: `one_line`, None shows as "-"."""
    return "-" if value is None else one_line(value)


def table(header: list[str], rows: list[list]) -> str:
    """Left-aligned columns with a rule under the header; every cell through `terminal_cell`."""
    return tabulate([[terminal_cell(c) for c in row] for row in rows], headers=[terminal_cell(h) for h in header],
                    tablefmt="simple", disable_numparse=True, stralign="left")
