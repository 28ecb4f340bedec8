"""pytest front end: Hypothesis profiles (the --bnconf-* options are the installed plugin's, bnconf.testing.plugin).

Profiles: `default` (fast and derandomized: every run, CI's included, draws the same examples, so a red run is
the code's doing and reproduces) and `thorough` (many more examples, freshly random each run: the one that
explores). Pick one with `--hypothesis-profile thorough` or the environment variable BNCONF_PROFILE=thorough.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
settings.register_profile("default", max_examples=60, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("BNCONF_PROFILE", "default"))


def pytest_addoption(parser, pluginmanager):
    """The --bnconf-* options come from bnconf's pytest plugin (`bnconf.testing.plugin`, the pytest11 entry point
    `bnconf`); registered here only where it is not loaded (`-p no:bnconf`, or an install older than the entry
    point: `pip install -e . --no-deps` registers it)."""
    if not pluginmanager.has_plugin("bnconf"):
        from bnconf.testing.plugin import add_options

        add_options(parser)
