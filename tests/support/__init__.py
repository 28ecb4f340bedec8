"""Test-only helpers: independent reference computations and deliberately simple implementations."""
