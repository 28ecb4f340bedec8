"""Finding the replica backends (adapters/replica_protocol.py): the built-in data-parallel adapters.

    discover_replicas()                    -> (backends that loaded, [Unavailable(family, reason)])
    load_replicas("my_pkg.sync:BACKENDS")  the backends a module (or file.py) attribute holds, checked

Each adapter module exposes `BACKENDS`, a list of replica backend objects, and imports no framework itself
(its worker processes do). A family whose module cannot be imported (not written yet, or broken) is
reported `Unavailable` with the reason instead of stopping the run; a backend whose framework is missing is
found here and says so through its own `unavailable(device)`. Importing this module imports no framework.
"""

from .registry import TargetError, Unavailable, _import_target

# family -> (target, the extras that install its framework)
REPLICA_TARGETS: dict[str, tuple[str, str]] = {
    "numpy": ("bnconf.adapters.example_replicas:BACKENDS", "test"),
    "jax": ("bnconf.adapters.jax_replicas:BACKENDS", "jax"),
    "keras": ("bnconf.adapters.keras_replicas:BACKENDS", "keras,tensorflow"),
    "torch": ("bnconf.adapters.torch_replicas:BACKENDS", "torch"),
    "cuda": ("bnconf.adapters.cuda_replicas:BACKENDS", "test"),
}

REQUIRED = ("name", "convention", "replica", "dtypes", "devices", "world_sizes")

_ORIGINS: dict[int, str] = {}


class ReplicaBackendError(ValueError):
    """An object that is not a replica backend, with what it lacks."""


def check_replica_backend(obj) -> None:
    """ReplicaBackendError naming the first attribute of the replica protocol `obj` lacks."""
    for attr in REQUIRED:
        if not hasattr(obj, attr):
            raise ReplicaBackendError(f"{obj!r} has no attribute {attr!r}: not a replica backend "
                                      "(see bnconf.adapters.replica_protocol)")
    if not callable(getattr(obj, "step", None)):
        raise ReplicaBackendError(f"{obj.name!r} has no step(request) method: not a replica backend")
    if not obj.world_sizes or any(not isinstance(w, int) or w < 1 for w in obj.world_sizes):
        raise ReplicaBackendError(f"{obj.name!r}: world_sizes must be positive integers, got {obj.world_sizes!r}")


def load_replicas(target: str) -> list:
    """The replica backends `target` ("module:attr" or "path/file.py:attr") names, each checked."""
    try:
        obj = _import_target(target)
    except TargetError:
        raise
    except ImportError as e:
        raise TargetError(f"{target!r}: cannot import {e.name or 'it'}: {e}") from e
    except (Exception, SystemExit) as e:  # an adapter failing at import: one line, the run goes on
        raise TargetError(f"{target!r}: importing it raised {type(e).__name__}: {e}") from e
    backends = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    names = set()
    for b in backends:
        try:
            check_replica_backend(b)
        except ReplicaBackendError as e:
            raise TargetError(f"{target!r}: {e}") from None
        if b.name in names:
            raise TargetError(f"{target!r}: two replica backends are named {b.name!r}")
        names.add(b.name)
        _ORIGINS[id(b)] = target
    return backends


def replica_origin(backend) -> str | None:
    """The target a loaded replica backend came from (a saved case loads it again from there)."""
    return _ORIGINS.get(id(backend))


def discover_replicas(targets: dict[str, tuple[str, str]] | None = None) -> tuple[list, list[Unavailable]]:
    """(replica backends that loaded, families that did not and why), in REPLICA_TARGETS' order."""
    found, missing = [], []
    for family, (target, extra) in (REPLICA_TARGETS if targets is None else targets).items():
        try:
            found.extend(load_replicas(target))
        except TargetError as e:
            cause = e.__cause__
            module = target.rpartition(":")[0]
            if isinstance(cause, ModuleNotFoundError) and cause.name == module and module.startswith("bnconf."):
                missing.append(Unavailable(family, f"{module} is not part of this bnconf installation"))
            elif isinstance(cause, ModuleNotFoundError) and cause.name and cause.name.split(".")[0] != "bnconf":
                missing.append(Unavailable(family, f"{cause.name} is not installed (pip install 'bnconf[{extra}]')"))
            else:
                missing.append(Unavailable(family, str(e)))
    return found, missing


__all__ = ["REPLICA_TARGETS", "ReplicaBackendError", "check_replica_backend", "discover_replicas", "load_replicas",
           "replica_origin"]
