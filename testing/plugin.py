"""bnconf's pytest plugin, registered as `bnconf` by the `pytest11` entry point of the bnconf distribution.

Inert unless used: importing it imports nothing beyond the standard library and pytest, and its hooks only
register the options, compare paths with the suite's folder, and look into `sys.modules`. The suite itself
(`bnconf.testing.test_*`) runs with

    python -m pytest --pyargs bnconf.testing --bnconf-backend my_pkg.bn:BACKEND [--bnconf-records FILE.py:RECORDS]

Options (each also read from an environment variable, comma-separated):
    --bnconf-backend TARGET   a backend to test instead of the built-ins (repeatable; BNCONF_BACKENDS)
    --bnconf-device DEVICE    only these devices (repeatable; BNCONF_DEVICES)
    --bnconf-dtype DTYPE      only these dtypes (repeatable; BNCONF_DTYPES)
    --bnconf-records TARGET   the project's own records file (repeatable; BNCONF_RECORDS)
    --bnconf-examples N       Hypothesis examples per conformance cell and per state machine
"""

import argparse
import os
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).parent  # the folder of the suite's test modules
_OPTIONS = ("bnconf_backend", "bnconf_device", "bnconf_dtype", "bnconf_records", "bnconf_examples")
_ENVIRONMENT = ("BNCONF_BACKENDS", "BNCONF_DEVICES", "BNCONF_DTYPES", "BNCONF_RECORDS")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of examples, 1 or more, got {text!r}")
    return n


def add_options(parser) -> None:
    """The `--bnconf-*` options (also used by bnconf's own tests/conftest.py when this plugin is blocked)."""
    group = parser.getgroup("bnconf", "bnconf: Batch Normalization conformance (python -m pytest --pyargs bnconf.testing)")
    group.addoption("--bnconf-backend", action="append", default=[], metavar="TARGET",
                    help="module:attribute or path/to/file.py:attribute naming a backend (or a list of them) to test "
                         "instead of the built-ins and installed entry points (repeatable; env BNCONF_BACKENDS, comma-separated)")
    group.addoption("--bnconf-device", action="append", default=[], metavar="DEVICE",
                    help="only these devices, e.g. cpu or cuda (repeatable; env BNCONF_DEVICES)")
    group.addoption("--bnconf-dtype", action="append", default=[], metavar="DTYPE",
                    help="only these dtypes, e.g. float32 (repeatable; env BNCONF_DTYPES)")
    group.addoption("--bnconf-records", action="append", default=[], metavar="TARGET",
                    help="module:attribute or path/to/file.py:attribute naming the project's own known discrepancies "
                         "and edge-case records, applied to the selected backends (repeatable; env BNCONF_RECORDS)")
    group.addoption("--bnconf-examples", type=_positive, default=None, metavar="N",
                    help="Hypothesis examples per conformance cell and per state machine (default: a twentieth of the "
                         "Hypothesis profile's max_examples, at least 3, per cell; a sixth, at least 5, per state machine)")


def pytest_addoption(parser):
    add_options(parser)


def used(config) -> bool:
    """Whether this run names anything for bnconf (an option or one of its environment variables)."""
    return any(config.getoption(o, default=None) for o in _OPTIONS) or any(os.environ.get(v) for v in _ENVIRONMENT)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    if not used(config):
        return
    from bnconf.testing import support  # loads the backends and records now: a bad TARGET is one line, exit 4

    try:
        support.selected(config)
    except ValueError as e:  # TargetError, BackendError, a records file that is bad input
        raise pytest.UsageError(f"bnconf: {e}") from None


def pytest_report_header(config):
    support = sys.modules.get("bnconf.testing.support")
    return support.header(config) if support is not None and used(config) else None


def _in_suite(path: Path) -> bool:
    return path.name == SUITE.name and (path == SUITE or path.resolve() == SUITE.resolve())


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    """The suite's folder as a plain directory: its __init__.py is never imported under a guessed name (it sits in
    the `bnconf` namespace, which rootdir-based module names cannot see)."""
    if _in_suite(path):
        return pytest.Dir.from_parent(parent, path=path)
    return None


class SuiteModule(pytest.Module):
    """A test module of the suite, imported as `bnconf.testing.<name>` whatever the import mode."""

    def _getobj(self):
        import importlib

        return importlib.import_module(f"bnconf.testing.{self.path.stem}")


def _suite_module(path: Path) -> bool:
    return path.suffix == ".py" and path.name.startswith("test_") and _in_suite(path.parent)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    if _suite_module(module_path):
        return SuiteModule.from_parent(parent, path=module_path)
    return None


def pytest_collect_file(file_path, parent):
    """The suite's modules even where the project's `python_files` would not match test_*.py."""
    if not _suite_module(file_path) or parent.session.isinitpath(file_path):
        return None
    from fnmatch import fnmatch

    if any(fnmatch(file_path.name, p) for p in parent.config.getini("python_files")):
        return None  # pytest's own collection makes it (through pytest_pycollect_makemodule)
    return SuiteModule.from_parent(parent, path=file_path)


def pytest_sessionfinish(session):
    """An xdist worker hands its record counts to the controller (`pytest_testnodedown`)."""
    support = sys.modules.get("bnconf.testing.support")
    output = getattr(session.config, "workeroutput", None)
    if support is not None and output is not None:
        output["bnconf"] = support.worker_output()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """The controller (pytest -n N): a worker's counts join the summary."""
    output = getattr(node, "workeroutput", {}).get("bnconf")
    if output:
        from bnconf.testing import support

        support.absorb(output)


def pytest_terminal_summary(terminalreporter):
    """Known discrepancies no case needed, for the backends whose conformance cells ran (only when they ran),
    in every xdist worker included."""
    support = sys.modules.get("bnconf.testing.support")
    if support is not None:
        for line in support.summary_lines():
            terminalreporter.write_line(line)
