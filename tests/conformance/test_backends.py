"""Every available backend against the oracle, generated over (backend x device x dtype x mode).

Nothing here is written per backend: the cells come from what each backend declares, the inputs from its
convention, the tolerance from the error model for its declared precision. A case covered by a known
discrepancy is checked against the recorded behaviour instead, for the quantities the record names.
"""

import os
import shlex

import pytest
from hypothesis import given, note, settings, target
from hypothesis.control import current_build_context
from hypothesis import strategies as st

from bnconf.adapters.protocol import unavailable
from bnconf.adapters.registry import origin
from bnconf.conformance import selection
from bnconf.conformance.battery import target_score
from bnconf.conformance.cases import case_inputs
from bnconf.conformance.discrepancies import REGISTRY, matches
from bnconf.conformance.engine import assess
from bnconf.conformance.repro import save_case

DISCREPANCIES_SEEN: set[str] = set()  # read by conftest.py at the end of the session to report stale entries
BACKENDS_RUN: set[str] = set()  # the backends whose cells ran: only their entries can be stale


def _selection(config):
    targets = selection.choice(config.getoption("bnconf_backend"), "backend")
    found, unavailable_families = selection.backends(targets)
    devices = selection.choice(config.getoption("bnconf_device"), "device")
    dtypes = selection.choice(config.getoption("bnconf_dtype"), "dtype")
    return selection.cells(found, devices, dtypes), unavailable_families


def pytest_generate_tests(metafunc):
    cells, unavailable_families = _selection(metafunc.config)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend, device, dtype, mode", [
            pytest.param(*cell, id=f"{cell[0].name}-{cell[1]}-{cell[2]}-{cell[3].value}",
                         marks=[pytest.mark.gpu] if cell[1] in ("cuda", "gpu") else [])
            for cell in cells
        ])
    if "family" in metafunc.fixturenames:
        metafunc.parametrize("family, reason", [(u.name, u.reason) for u in unavailable_families])


def test_an_unavailable_backend_family_is_skipped_with_its_reason(family, reason):
    pytest.skip(f"{family}: {reason}")


def _describe(c) -> str:
    return (f"{c.verdict.value} {c.detail}: max error/bound {c.max_ratio:.3g} at {c.worst_index} "
            f"(observed {c.observed!r}, expected {c.expected!r}, bound {c.bound!r})")


@settings(max_examples=max(3, settings().max_examples // 20))  # hundreds of cells: a twentieth of the profile each (`bnconf report` explores deeper)
@given(data=st.data())
def test_backend_conforms_to_its_convention(backend, device, dtype, mode, data):
    reason = unavailable(backend, device)
    if reason:
        pytest.skip(reason)
    BACKENDS_RUN.add(backend.name)
    inputs = data.draw(case_inputs(backend, mode, dtype), label="inputs")
    a = assess(backend, mode, inputs, dtype, device)
    target(target_score(max((c.max_ratio for c in a.declared.values()), default=0.0)), label="max error / bound")
    if a.discrepancy is not None:
        note(f"known discrepancy {a.discrepancy.id}: {a.discrepancy.explanation}")
        if a.discrepancy_seen:
            DISCREPANCIES_SEEN.add(a.discrepancy.id)
    problems = {q: _describe(c) for q, c in a.problems().items()}
    if problems and current_build_context().is_final:  # the shrunk example, reported once
        folder = save_case(os.environ.get("BNCONF_REPRO_DIR", "bnconf-repro"), backend, mode, inputs, dtype, device)
        target_ = shlex.quote(origin(backend) or "TARGET")
        problems["replay"] = f"bnconf replay {folder} --backend {target_}   (or: python {folder / 'repro.py'} {target_})"
    assert not problems, problems


def stale_discrepancies() -> list[str]:
    """Entries for backends that ran which no case needed (a cell's few examples may miss a rare case:
    the report's per-entry counts say more)."""
    return [d.id for d in REGISTRY if d.id not in DISCREPANCIES_SEEN and any(matches(b, d.backends) for b in BACKENDS_RUN)]
