"""Which backends, devices and dtypes a run covers: shared by the pytest options and the command line."""

import hashlib
import os

from ..adapters.protocol import param_dtypes
from ..adapters.registry import check_unique_names, discover, load
from ..spec.error_model import layout_name


def choice(values: list[str], name: str) -> list[str]:
    """`values` if given, else the comma-separated environment variable BNCONF_<NAME>S."""
    return list(values) or [v for v in os.environ.get(f"BNCONF_{name.upper()}S", "").split(",") if v]


def backends(targets: list[str]):
    """(backends, unavailable families): the named targets, or every built-in and installed backend."""
    found, missing = ([b for t in targets for b in load(t)], []) if targets else discover()
    found = list({id(b): b for b in found}.values())  # a target named twice runs once
    check_unique_names(found, "the selected backends" if targets else "the installed backends")
    return found, missing


def layouts(backend, dtype: str) -> list[str]:
    """The cell dtypes of `dtype` data: `dtype` itself (the backend's own layout), then one mixed layout
    "dtype/param" per parameter dtype the backend declares for it (`param_dtypes`)."""
    return [dtype, *(layout_name(dtype, p) for p in param_dtypes(backend, dtype))]


def cells(backends_, devices: list[str], dtypes: list[str]):
    """(backend, device, dtype, mode) for every combination a backend declares and the run selects; a mixed
    layout's dtype is its name ("float16/float32", selected with its data dtype), right after its data dtype's
    cells, so a backend declaring none has exactly the cells (and seeds) it always had."""
    return [
        (b, device, layout, mode)
        for b in backends_
        for device in b.devices
        if not devices or device in devices
        for dtype in b.dtypes
        if not dtypes or dtype in dtypes
        for layout in layouts(b, dtype)
        for mode in sorted(b.modes, key=lambda m: m.value)
    ]


def shard_of(cell, n: int) -> int:
    """The shard (1..n) of a (backend, device, dtype, mode) cell: a stable hash (SHA-256, not Python's salted
    hash) of the backend's name, the device, the dtype and the mode, so a cell lands in the same shard on every
    machine, whichever other backends are installed there."""
    backend, device, dtype, mode = cell
    key = "\x1f".join((str(backend.name), str(device), str(dtype), str(getattr(mode, "value", mode))))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n + 1


def shard(cells_, k: int, n: int) -> list:
    """The cells of shard `k` of `n` (1 <= k <= n), in their order: shards 1..n partition `cells_` exactly."""
    if not 1 <= k <= n:
        raise ValueError(f"shard {k} of {n}: k must be from 1 to n")
    return [c for c in cells_ if shard_of(c, n) == k]
