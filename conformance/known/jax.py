"""Known discrepancies of the JAX adapters (see conformance/discrepancies.py for what an entry means)."""

from ..discrepancies import KnownDiscrepancy  # noqa: F401

ENTRIES: tuple[KnownDiscrepancy, ...] = ()
