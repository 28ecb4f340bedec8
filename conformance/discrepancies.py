"""Looking up known discrepancies: the entry of a registry that covers a case.

The record type is `records.KnownDiscrepancy`; the built-in registry is `known.DISCREPANCIES` (one data module
per framework family). Lookups take the registry as an argument; the registry of a backend is
`known.discrepancies_for(backend)` (its own records, those attached from records files, then the built-ins),
so a user's records go through the same door. `REGISTRY`, `discrepancies_for`, `KnownDiscrepancy` and
`matches` are re-exported for existing callers.
"""

from ..spec import Inputs, Mode
from .known import DISCREPANCIES as REGISTRY, discrepancies_for
from .records import KnownDiscrepancy, matches


def covering(registry: tuple[KnownDiscrepancy, ...], backend_name: str, mode: Mode, dtype: str, device: str,
             inputs: Inputs) -> KnownDiscrepancy | None:
    """The first entry of `registry` that covers the case, or None."""
    return next((d for d in registry if d.covers(backend_name, mode, dtype, device, inputs)), None)


__all__ = ["REGISTRY", "KnownDiscrepancy", "covering", "discrepancies_for", "matches"]
