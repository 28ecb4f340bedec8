"""Looking up known discrepancies: the entry of a registry that covers a case.

The record type is `records.KnownDiscrepancy`; the built-in registry is `known.DISCREPANCIES` (one data module
per framework family). Lookups take the registry as an argument, so a backend's own records go through the
same door. `REGISTRY`, `KnownDiscrepancy` and `matches` are re-exported for existing callers.
"""

from ..spec import Inputs, Mode
from .known import DISCREPANCIES as REGISTRY
from .records import KnownDiscrepancy, matches


def covering(registry: tuple[KnownDiscrepancy, ...], backend_name: str, mode: Mode, dtype: str, device: str,
             inputs: Inputs) -> KnownDiscrepancy | None:
    """The first entry of `registry` that covers the case, or None."""
    return next((d for d in registry if d.covers(backend_name, mode, dtype, device, inputs)), None)


__all__ = ["REGISTRY", "KnownDiscrepancy", "covering", "matches"]
