"""Finding backends: the built-in adapters, those other packages install, and one named on the command line.

    load("my_pkg.bn:BACKEND")          a module attribute
    load("path/to/my_bn.py:BACKEND")   a file's attribute
    discover()                         built-ins and the "bnconf.adapters" entry-point group

An attribute may hold one backend or a sequence of them. A built-in whose framework is not installed is
reported as `Unavailable` with the reason; importing this module imports no framework.
"""

import importlib
import importlib.util
import sys
import zlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from .families import builtin_targets
from .protocol import BackendError, check_backend

ENTRY_POINT_GROUP = "bnconf.adapters"

# family -> (target, the extra that installs its framework), derived from the declarative entries in
# families.py (families one target loads share a name: "jax" is Flax, Haiku and Equinox)
BUILTIN = builtin_targets()


class TargetError(ValueError):
    """A TARGET that cannot be loaded, with the reason and how to fix it."""


@dataclass(frozen=True)
class Unavailable:
    name: str
    reason: str


def _import_target(target: str):
    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise TargetError(f"{target!r}: expected module:attribute or path/to/file.py:attribute, "
                          "e.g. bnconf.adapters.example_numpy:BACKEND")
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise TargetError(f"{target!r}: no file {path} (from {Path.cwd()}); check the path")
        name = f"bnconf_user_{zlib.crc32(str(path.resolve()).encode()):08x}"
        if name in sys.modules:  # the same file named twice is one module, its backends the same objects
            return _attribute(sys.modules[name], module_part, attr)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]  # no half-imported module left behind
            raise
    else:
        module = importlib.import_module(module_part)
    return _attribute(module, module_part, attr)


def _attribute(module, module_part: str, attr: str):
    target = f"{module_part}:{attr}"
    if not hasattr(module, attr):
        there = _backend_names(module)
        raise TargetError(f"{target!r}: {module_part} has no attribute {attr!r}; "
                          + (f"backends there: {', '.join(there)}" if there else "name the attribute that holds the backend(s)"))
    return getattr(module, attr)


def _backend_names(module) -> list[str]:
    """The public attributes of `module` that look like a backend or a list of them (they have run())."""
    runs = lambda v: callable(getattr(v, "run", None)) and not isinstance(v, type)  # noqa: E731
    return [n for n, v in vars(module).items()
            if not n.startswith("_") and (runs(v) or isinstance(v, (list, tuple)) and v and all(map(runs, v)))]


_ORIGINS: dict[int, str] = {}


def origin(backend) -> str | None:
    """The target a loaded backend came from, so that a saved case can load it again."""
    return _ORIGINS.get(id(backend))


def load(target: str) -> list:
    """The backends named by `target`, each checked against the protocol."""
    try:
        obj = _import_target(target)
    except (TargetError, BackendError):
        raise
    except ImportError as e:
        module_part = target.rpartition(":")[0]
        fix = ("check the module name, or that its package is installed in this Python" if module_part.startswith(e.name or "-")
               else f"{module_part} needs it: install it in this Python")
        raise TargetError(f"{target!r}: cannot import {e.name or 'it'}: {e}; {fix}") from e
    except (Exception, SystemExit) as e:  # a user's module failing (or exiting) at import: say so in one line
        raise TargetError(f"{target!r}: importing it raised {type(e).__name__}: {e}; fix the module") from e
    backends = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    module_part, _, attr = target.rpartition(":")
    where = f"{Path(module_part).resolve()}:{attr}" if module_part.endswith(".py") else target
    for b in backends:
        try:
            check_backend(b)
        except BackendError as e:
            raise BackendError(f"{target!r}: {e}") from None
        _ORIGINS[id(b)] = where  # absolute for files, so that a saved case replays from anywhere
    check_unique_names(backends, repr(target))
    return backends


def check_unique_names(backends, where: str) -> None:
    """Raise BackendError when two backends share a name: a name identifies a backend in a worker, a saved
    case, a known discrepancy and the report, so two of them would be judged as one."""
    seen: dict[str, object] = {}
    for b in backends:
        if b.name in seen and seen[b.name] is not b:
            raise BackendError(f"{where}: two different backends are named {b.name!r}; give each backend a unique name")
        seen[b.name] = b


def discover() -> tuple[list, list[Unavailable]]:
    """(backends that loaded, families that did not and why): built-ins, then installed entry points."""
    found, missing = [], []
    targets = [(family, target, f"pip install 'bnconf[{extra}]'") for family, (target, extra) in BUILTIN.items()]
    targets += [(ep.name, ep.value, f"check the package that installs {ep.value}") for ep in entry_points(group=ENTRY_POINT_GROUP)]
    for family, target, fix in targets:
        try:
            found.extend(load(target))
        except TargetError as e:
            cause = e.__cause__
            if isinstance(cause, ModuleNotFoundError) and cause.name and cause.name.split(".")[0] != "bnconf":
                missing.append(Unavailable(family, f"{cause.name} is not installed ({fix})"))
            else:
                missing.append(Unavailable(family, str(e)))
    return found, missing
