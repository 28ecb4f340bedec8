"""Compiled JAX programs kept on disk, shared by the JAX-based adapters (Flax, Haiku, Equinox, Keras on JAX).

A battery draws a new input shape for most examples, and on a CPU each new (program, shapes, dtypes) costs JAX
tracing and lowering (20 to 50 ms) and XLA a compilation (0.1 to 1 s), against well under a millisecond to run it.
`call` runs a jitted function through a cache of compiled executables: in memory (the last `IN_MEMORY`), else
in a folder, else compiled (`jitted.lower(*args).compile()`) and saved there. A process that finds the program on
disk loads it in a few milliseconds, without tracing, lowering or compiling.

An entry is keyed by everything that decides the program: the adapter's key (backend name and static signature),
the arguments' tree, shapes, dtypes and weak types, float64 on or off, the device platform, bnconf's files that
write the program (by content), the installed files (path, size, mtime) of jax, jaxlib, ml_dtypes and the
library, the CPU's architecture and flags, and the JAX_*/XLA_* environment. What runs is what jit would compile
(`tests/adapters/test_jax.py` checks outputs bit for bit); a changed library, adapter or flag is another key. An
entry that cannot be read, or whose executable raises, is dropped and the program run through jit instead.

Where: `$BNCONF_JAX_CACHE` (a folder; "off", "0" or "" turn the cache off), else `$XDG_CACHE_HOME/bnconf/jax`
(`~/.cache/bnconf/jax`), made private (0700) when bnconf creates it. Loading an executable runs its machine code
(and JAX's loader unpickles it), so entries are kept by `signed_store`: nothing is loaded that someone else could
have written (a folder not this user's alone turns the cache off with one line; an entry not signed under the
folder's private key is never unpickled), bounded (least recently used removed first). CPU only (elsewhere
`call` is plain jit). Nothing here imports jax at import time.
"""

import functools
import platform
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import signed_store

ENV = "BNCONF_JAX_CACHE"
FORMAT = 2  # of an entry; part of every key (2: entries kept by signed_store)
IN_MEMORY = 512  # loaded executables kept per process
_LOADED: OrderedDict = OrderedDict()


@dataclass(frozen=True)
class Program:
    """What decides a jitted function's program besides its arguments."""

    key: tuple  # e.g. (backend name, its class, the static signature): its repr must be stable across processes
    packages: tuple[str, ...] = ()  # import names of the libraries it calls (jax, jaxlib and ml_dtypes always count)
    sources: tuple[str, ...] = ()  # bnconf's files that write it


def cache_dir() -> Path | None:
    """The folder, None when turned off (`BNCONF_JAX_CACHE=off`)."""
    return signed_store.folder_from(ENV, "jax")


def forget() -> None:
    """Drop the executables held in memory and the folder's checked key (the folder stays)."""
    _LOADED.clear()
    signed_store.secret.cache_clear()


COUNTS = {"compiled": 0, "loaded": 0}  # executables compiled, and loaded from the folder, by this process


def call(jitted, args: tuple, program: Program, device, devices=None):
    """`jitted(*args)`, through the cache of compiled executables when it is on and `device` is a CPU; `devices`:
    the devices a multi-device program (a shard_map over a mesh) runs on, in the mesh's order (default [device])."""
    store = signed_store.opened(cache_dir(), "JAX program", ENV) if device.platform == "cpu" else None
    if store is None:
        return jitted(*args)
    folder, key = store
    text = _key_text(program, args, device)
    digest = signed_store.digest_of(text)
    executable = _LOADED.pop(digest, None)
    from_disk = False
    if executable is None:
        executable = _read(folder, text, device, key, list(devices) if devices is not None else [device])
        from_disk = executable is not None
        COUNTS["loaded"] += from_disk
        if executable is None:
            executable = jitted.lower(*args).compile()  # the backend's own errors (tracing) are raised here
            COUNTS["compiled"] += 1
            _write(folder, text, executable, key)
    _LOADED[digest] = executable
    while len(_LOADED) > IN_MEMORY:
        _LOADED.popitem(last=False)
    if not from_disk:
        return executable(*args)
    try:
        return executable(*args)
    except Exception:  # noqa: BLE001 - a bad entry: drop it, jit decides (and raises what the backend raises)
        _LOADED.pop(digest, None)
        signed_store.discard(folder, text)
        return jitted(*args)


def _key_text(program: Program, args: tuple, device) -> str:
    import jax
    import numpy as np

    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = tuple((tuple(a.shape), a.dtype.name, bool(a.weak_type)) if isinstance(a, jax.Array) else type(a).__name__
                   for a in leaves)
    x64 = jax.dtypes.canonicalize_dtype(np.float64).name  # float64 under jax_enable_x64, else float32
    return repr((FORMAT, program.key, str(tree), shapes, x64, device.platform,
                 fingerprint(program.packages, program.sources)))


@functools.lru_cache(maxsize=None)
def fingerprint(packages: tuple[str, ...], sources: tuple[str, ...]) -> str:
    """A digest of what the compiled code depends on beyond the key: versions, installed files, bnconf's sources,
    the CPU and the JAX/XLA environment."""
    import jax
    import jaxlib

    facts = (jax.__version__, jaxlib.__version__, platform.machine(), signed_store.cpu_flags(),
             jax.devices("cpu")[0].client.platform_version)
    return signed_store.fingerprint(facts, {"jax", "jaxlib", "ml_dtypes", *packages}, sources, ("JAX_", "XLA_"), ENV)


def _read(folder: Path, text: str, device, key: bytes, devices: list):
    """The entry's executable loaded onto `devices`, None when there is none, it is not this user's alone or not
    signed under `key` (signed_store.read: nothing of it is unpickled then), or it cannot be loaded (removed)."""
    parts = signed_store.read(folder, text, key)
    if parts is None:
        return None
    try:
        import jax
        from jax.experimental import serialize_executable

        in_tree, out_tree, blob = parts
        trees = [jax.tree_util.PyTreeDef.deserialize_using_proto(jax.tree_util.default_registry, t) for t in (in_tree, out_tree)]
        return serialize_executable.deserialize_and_load(blob, *trees, backend=device.client,
                                                         execution_devices=devices)
    except Exception:  # noqa: BLE001 - truncated, corrupt or from another jax: compile instead
        signed_store.discard(folder, text)
        return None


def _write(folder: Path, text: str, executable, key: bytes) -> None:
    """Save the executable (signed_store.write); one that cannot be serialized stays in memory only."""
    try:
        from jax.experimental import serialize_executable

        blob, in_tree, out_tree = serialize_executable.serialize(executable)
        parts = [in_tree.serialize_using_proto(), out_tree.serialize_using_proto(), blob]
    except Exception:  # noqa: BLE001 - not serializable (constants)
        return
    signed_store.write(folder, text, parts, key)
