"""pytest front end: Hypothesis profiles (the --bnconf-* options are the installed plugin's, bnconf.testing.plugin).

Profiles: `default` (fast and derandomized: every run, CI's included, draws the same examples, so a red run is
the code's doing and reproduces) and `thorough` (many more examples, freshly random each run: the one that
explores). Pick one with `--hypothesis-profile thorough` or the environment variable BNCONF_PROFILE=thorough.

The suite runs in parallel (`python -m pytest -n auto`, pytest-xdist: the README's test command and CI's), each
worker's frameworks on its share of the cores (`_share_the_cores_between_xdist_workers`), and the example
database is safe under it by construction:
- `default` has no database (`database=None`; Hypothesis requires it with `derandomize=True`): a derandomized
  run draws the same examples every time, so there is nothing to replay, and CI's workers read and write nothing
  under .hypothesis/examples.
- `thorough` keeps Hypothesis's default database, a DirectoryBasedExampleDatabase in .hypothesis/examples of
  the working folder (in memory where that folder is not writable), one for every worker, deliberately not one
  per worker: a failure found by gw1 must replay in the next run even when gw0 gets that test. Sharing it is safe: each example is its own file named by a
  hash of its content and written through a temporary file and a rename; a test's key (the test's digest,
  the pytest node id for parametrised suites: bnconf.testing.support.keyed) belongs to that one test, and
  xdist runs each test in exactly one worker, so no two processes write one key's entries (the shared index
  of keys is written the same content-addressed way, and a missing or half-read entry is skipped, not fatal).
"""

import os
import re

import pytest
from hypothesis import HealthCheck, settings


def _share_the_cores_between_xdist_workers() -> None:
    """Under pytest-xdist, each worker's PyTorch, TensorFlow and BLAS get its share of the cores (a serial run
    keeps them all): each otherwise starts one compute thread per core in every worker, so on 2 cores two
    workers run 4+ threads that spin waiting for each other (PyTorch's and TensorFlow's adapter tests took 2.4x
    the CPU time; JAX showed no difference). Set before any framework is imported; a variable the user set wins.
    The children the tests start (isolated workers, replica groups, Keras' backend processes) inherit it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers <= 1:
        return
    threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(name, threads)


_share_the_cores_between_xdist_workers()

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
# `thorough` first, on Hypothesis's own defaults: registered after ours, it would inherit `default`'s
# derandomize=True and database=None (a profile's parent is the profile loaded at the time, here `default`).
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000, **_COMMON)
settings.register_profile("default", max_examples=60, derandomize=True, database=None, **_COMMON)
settings.load_profile(os.environ.get("BNCONF_PROFILE", "default"))


def pytest_addoption(parser, pluginmanager):
    """The --bnconf-* options come from bnconf's pytest plugin (`bnconf.testing.plugin`, the pytest11 entry point
    `bnconf`); registered here only where it is not loaded (`-p no:bnconf`, or an install older than the entry
    point: `pip install -e . --no-deps` registers it)."""
    if not pluginmanager.has_plugin("bnconf"):
        from bnconf.testing.plugin import add_options

        add_options(parser)


# Adapter modules that keep one worker (a group of replica processes) per test process, started by the first test
# that needs it (torch's four gloo processes take about 15 s on 2 cores): every test that uses one runs in the same
# xdist worker, in the group named after the module; a test file that uses one declares it with
# `pytestmark = pytest.mark.xdist_group("<module>")`, a test parametrized by its `target` gets it here.
SHARED_WORKERS = ("bnconf.adapters.torch_replicas", "bnconf.adapters.jax_replicas", "bnconf.adapters.keras_replicas")


def _group(item) -> str | None:
    """The xdist group of a test parametrized by a `target` with a shared worker (SHARED_WORKERS): the module;
    of a test of a selected backend (the installed suite's tests, collected here): its child
    process where the backend runs in one (the Keras backends: one child per Keras backend, a few seconds to
    start), else, for an edge-case test, the backend (its edge cases run once per process, when its first test
    needs them); None otherwise. Only word characters, '.', ':' and '-': xdist finds the group after the last '@'
    of the node id, and only when no ']' follows it."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    module = params["target"].partition(":")[0] if isinstance(params.get("target"), str) else None
    if module in SHARED_WORKERS:
        return module
    backend = params.get("backend")
    if backend is None:
        return None
    from bnconf.conformance.isolation import affinity  # here: imports NumPy, after the thread limits are set

    child = affinity(backend)  # the child process of adapters/subprocess_backend.py's proxy: target and environment
    if child is not None:
        group = f"child-{child}"
    elif item.originalname in ("test_edge_case", "test_edge_records"):
        group = f"edge-{backend.name}-{params.get('device')}"
    else:
        return None
    return re.sub(r"[^\w.:=-]+", "_", group)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the marks
def pytest_collection_modifyitems(config, items):
    """Tests that share an expensive per-process start (a Keras child process, a backend's edge-case run) carry
    `xdist_group` marks, so that under `-n auto` (pyproject.toml's addopts give `--dist loadgroup`) each group
    runs in one worker and starts it once: the suite took 354 s instead of 401 s on 2 cores. Inert in a serial
    run."""
    for item in items:
        group = _group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    _long_running_first(items)


def _long_running_first(items) -> None:
    """The test files that hold a test marked `slow` first, each file's tests in their order (a stable sort):
    xdist hands tests out in this order, and a long test handed out last keeps one worker busy while the other
    has nothing left (the last 3% of the suite took a fifth of its time). Longest first, the short ones fill in."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
