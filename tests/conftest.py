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
