"""Every bnconf module imports on its own, first, in a fresh interpreter; and bnconf's own module-level
imports form no cycle (a cycle is what makes a module fail when it happens to be imported first)."""

import ast
from dataclasses import dataclass
import functools
import importlib.util
from pathlib import Path
import pkgutil
import subprocess
import sys

import pytest

PACKAGES = ("bnconf.spec", "bnconf.adapters", "bnconf.conformance", "bnconf.conformance.known", "bnconf.reports")
FRAMEWORKS = frozenset({"torch", "tensorflow", "jax", "keras", "flax", "haiku", "equinox", "tf_keras"})
SKIP = 3  # the fresh interpreter's exit status when a framework the module imports is not installed

# Import the module first; a framework that is not installed exits with SKIP and its name, anything else fails.
IMPORT_FIRST = f"""
import importlib, sys
try:
    importlib.import_module(sys.argv[1])
except ImportError as e:
    if (e.name or "").split(".")[0] not in {sorted(FRAMEWORKS)!r}:
        raise
    print(e.name)
    sys.exit({SKIP})
"""


@dataclass(frozen=True)
class Module:
    """One module of bnconf: its dotted name and source file."""

    name: str
    path: Path

    @property
    def package(self) -> str:
        """The package its relative imports are resolved against."""
        return self.name if self.path.name == "__init__.py" else self.name.rpartition(".")[0]


def bnconf_modules() -> dict[str, Module]:
    """Every module of PACKAGES (the packages themselves included), by name."""
    found = {}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        found[package] = Module(package, Path(spec.origin))
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if not info.ispkg:
                found[f"{package}.{info.name}"] = Module(f"{package}.{info.name}",
                                                         Path(info.module_finder.path) / f"{info.name}.py")
    return found


def _top_level(body: list[ast.stmt]):
    """The import statements Python runs when the module is imported: not those inside functions, nor under
    `if TYPE_CHECKING:`."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _top_level(node.orelse)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _top_level(getattr(node, field, []))


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """A module's syntax tree, parsed once per process (the graph is built at collection and by three tests)."""
    return ast.parse(path.read_text(), str(path))


def imported_names(module: Module, modules: dict[str, Module]) -> set[str]:
    """The absolute names of the modules `module` imports at its top level. `from X import y` counts as X.y
    where that is one of `modules`, else as X (an attribute of X: X must have run)."""
    names = set()
    for node in _top_level(_parsed(module.path).body):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = module.package.split(".")
            parent = ".".join(parts[:len(parts) - node.level + 1])
            base = f"{parent}.{base}" if base else parent
        submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
        names |= submodules
        if len(submodules) < len(node.names):
            names.add(base)
    return names


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the bnconf modules it imports at its top level."""
    return {name: imported_names(m, modules) & modules.keys() for name, m in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None when it is acyclic."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            if cycle := visit(nxt):
                return cycle
        path.pop()
        done.add(node)
        return None

    return next((c for node in sorted(graph) if (c := visit(node))), None)


def needs_framework(modules: dict[str, Module]) -> set[str]:
    """The modules that import a framework at their top level, themselves or through other bnconf modules."""
    graph = import_graph(modules)
    direct = {name for name, m in modules.items()
              if any(n.split(".")[0] in FRAMEWORKS for n in imported_names(m, modules))}
    heavy = set(direct)
    while grown := {name for name, deps in graph.items() if name not in heavy and deps & heavy}:
        heavy |= grown
    return heavy


MODULES = bnconf_modules()
HEAVY = needs_framework(MODULES)


def _param(name: str):
    return pytest.param(name, id=name, marks=[pytest.mark.slow] if name in HEAVY else [])


@pytest.mark.parametrize("name", [_param(name) for name in sorted(MODULES)])
def test_each_module_imports_first_in_a_fresh_interpreter(name, tmp_path):
    # run outside the repository, whose top-level folders (spec/, reports/, ...) would otherwise be importable
    done = subprocess.run([sys.executable, "-c", IMPORT_FIRST, name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    if done.returncode == SKIP:
        pytest.skip(f"{name} needs {done.stdout.strip()}, not installed")
    assert done.returncode == 0, f"importing {name} first fails:\n{done.stderr[-3000:]}"


def test_bnconf_imports_form_no_cycle():
    cycle = find_cycle(import_graph(MODULES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_import_graph_sees_relative_and_absolute_imports():
    graph = import_graph(MODULES)
    assert "bnconf.conformance.records" in graph["bnconf.conformance.known.torch"]  # from ..records import ...
    assert "bnconf.spec" in graph["bnconf.conformance.records"]  # from ..spec import ...
    # from . import edge, ...: the submodules, not the package being initialised
    assert {"bnconf.conformance.known.edge", "bnconf.conformance.known.torch"} <= graph["bnconf.conformance.known"]
    assert "bnconf.conformance.known" not in graph["bnconf.conformance.known"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_records_and_the_data_import_nothing_above_them():
    """records.py imports only spec/; the data under known/ imports only spec/, records.py, arrays.py and itself."""
    graph = import_graph(MODULES)
    assert {n for n in graph["bnconf.conformance.records"] if not n.startswith("bnconf.spec")} == set()
    allowed = ("bnconf.spec", "bnconf.conformance.records", "bnconf.conformance.arrays", "bnconf.conformance.known")
    for name in MODULES:
        if name.startswith("bnconf.conformance.known"):
            assert all(n.startswith(allowed) for n in graph[name]), (name, graph[name])


def test_the_data_modules_and_the_machinery_import_no_framework():
    light = ("bnconf.conformance.records", "bnconf.conformance.known", "bnconf.conformance.discrepancies",
             "bnconf.conformance.edge", "bnconf.conformance.engine")
    assert not any(name.startswith(light) for name in HEAVY), sorted(HEAVY)
