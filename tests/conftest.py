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
