"""Plain-text tables for the terminal (tabulate's "simple" format)."""

from tabulate import tabulate


def table(header: list[str], rows: list[list]) -> str:
    """Left-aligned columns with a rule under the header; None shows as "-"."""
    return tabulate([["-" if c is None else c for c in row] for row in rows], headers=header, tablefmt="simple",
                    disable_numparse=True, stralign="left")
