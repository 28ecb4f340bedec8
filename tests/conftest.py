"""pytest front end: Hypothesis profiles.

Profiles: `default` (fast, for CI and everyday runs) and `thorough` (many more examples). Pick one with
`--hypothesis-profile thorough` or the environment variable BNCONF_PROFILE=thorough.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
settings.register_profile("default", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("BNCONF_PROFILE", "default"))


def pytest_terminal_summary(terminalreporter):
    """Report known discrepancies that no case needed in this run (only when the backend tests ran)."""
    import sys

    module = next((m for name, m in sys.modules.items() if name.endswith("test_backends") and hasattr(m, "stale_discrepancies")), None)
    if module is None or not getattr(module, "DISCREPANCIES_SEEN", None) and not terminalreporter.stats.get("passed"):
        return
    stale = module.stale_discrepancies()
    if stale:
        terminalreporter.write_line(f"bnconf: known discrepancies no case needed in this run (stale?): {', '.join(stale)}")


def pytest_addoption(parser):
    """Which backends, devices and dtypes the backend tests run (environment variables work too)."""
    group = parser.getgroup("bnconf")
    group.addoption("--bnconf-backend", action="append", default=[], metavar="TARGET",
                    help="module:attribute or path/to/file.py:attribute naming a backend to test instead of the "
                         "built-ins (repeatable; env BNCONF_BACKENDS, comma-separated)")
    group.addoption("--bnconf-device", action="append", default=[], metavar="DEVICE",
                    help="only these devices, e.g. cpu or cuda (repeatable; env BNCONF_DEVICES)")
    group.addoption("--bnconf-dtype", action="append", default=[], metavar="DTYPE",
                    help="only these dtypes (repeatable; env BNCONF_DTYPES)")

