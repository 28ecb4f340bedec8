"""The built-in registries: every recorded known discrepancy and edge behaviour, gathered in one place.

One data module per framework family (torch, tensorflow, keras, jax: `KnownDiscrepancy` entries) and one for
the edge cases (edge: `EdgeRecord` entries); data only, no framework import. The machinery takes a registry as
an argument and defaults to these.
"""

from ..records import EdgeRecord, KnownDiscrepancy
from . import edge, jax, keras, tensorflow, torch

DISCREPANCIES: tuple[KnownDiscrepancy, ...] = torch.ENTRIES + tensorflow.ENTRIES + keras.ENTRIES + jax.ENTRIES
"""Known discrepancies, in lookup order (the first entry covering a case is the one applied)."""

EDGE_RECORDS: tuple[EdgeRecord, ...] = edge.ENTRIES
"""Recorded edge behaviours, in lookup order (the first entry matching an outcome is the one reported)."""

__all__ = ["DISCREPANCIES", "EDGE_RECORDS"]
