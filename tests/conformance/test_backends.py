"""Every available backend against the oracle, generated over (backend x device x dtype x mode).

The tests are the installed suite's (`bnconf.testing.test_conformance`, which any project runs on its own
backend with `python -m pytest --pyargs bnconf.testing --bnconf-backend TARGET`), collected here so that
bnconf's own run covers the built-ins and every installed entry point (or `--bnconf-backend`). Nothing there is
written per backend: the cells come from what each backend declares, the inputs from its convention, the
tolerance from the error model for its declared precision. A case covered by a known discrepancy is checked
against the recorded behaviour instead, for the quantities the record names; entries no case needed are listed
at the end of the run (the plugin's terminal summary).
"""

from bnconf.testing.test_conformance import pytest_generate_tests, test_backend_families_load, test_conformance  # noqa: F401
