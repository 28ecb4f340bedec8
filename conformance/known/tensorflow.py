"""Known discrepancies of the tensorflow adapters (see conformance/discrepancies.py for what an entry means)."""

from ..discrepancies import KnownDiscrepancy  # noqa: F401

ENTRIES: tuple[KnownDiscrepancy, ...] = ()
