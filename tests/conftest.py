"""pytest front end: Hypothesis profiles (the --bnconf-* options are the installed plugin's, bnconf.testing.plugin).

Profiles: `default` (fast and derandomized: every run, CI's included, draws the same examples, so a red run is
the code's doing and reproduces) and `thorough` (many more examples, freshly random each run: the one that
explores). Pick one with `--hypothesis-profile thorough` or the environment variable BNCONF_PROFILE=thorough.

The suite runs in parallel (`python -m pytest -n auto`, pytest-xdist: the README's test command and CI's), and
the example database is safe under it by construction:
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

from hypothesis import HealthCheck, settings

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
