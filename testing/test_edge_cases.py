"""The spec's edge cases (SPEC.md section 5) on every selected backend, one test per (backend, device, dtype, case,
mode): `test_edge_case[my_bn-cpu-float32-nan-in-x-train_forward]`.

Each outcome agrees with the spec or matches a recorded edge behaviour (bnconf's `conformance/known/edge.py`, or
the project's own from --bnconf-records); `test_edge_records[my_bn-cpu]` fails on a record that covered some of
the backend's outcomes and explained none of them (stale: edge cases are fixed inputs, so the backend changed).
A backend's edge cases run once per session, when its first test needs them.
"""

import pytest

from bnconf.testing import support


def pytest_generate_tests(metafunc):
    if metafunc.definition.name == "test_edge_case":
        from bnconf.conformance.edge import EDGE_CASES, case_dtypes

        s = support.selected(metafunc.config)
        params = []
        for b in s.backends:
            for device in s.backend_devices(b):
                for case in EDGE_CASES:
                    if not case.applies(b.convention):
                        continue
                    for dtype in case_dtypes(b, case, tuple(s.dtypes) if s.dtypes else None):
                        params += [pytest.param(b, device, dtype, case, mode,
                                                id=f"{b.name}-{device}-{dtype}-{case.id}-{mode.value}",
                                                marks=[pytest.mark.gpu] if device in ("cuda", "gpu") else [])
                                   for mode in case.modes if mode in b.modes]
        metafunc.parametrize("backend, device, dtype, case, mode", params)
    if metafunc.definition.name == "test_edge_records":
        s = support.selected(metafunc.config)
        metafunc.parametrize("backend, device", [
            pytest.param(b, device, id=f"{b.name}-{device}", marks=[pytest.mark.gpu] if device in ("cuda", "gpu") else [])
            for b in s.backends for device in s.backend_devices(b)])


_OUTCOMES: dict = {}  # (backend name, device, dtypes) -> (records, outcomes): each backend's edge cases run once


def outcomes_of(backend, device: str, config):
    """(the records that apply, every edge outcome of `backend` on `device` in the run's dtypes), run once."""
    from bnconf.conformance.edge import run_edge_cases

    dtypes = tuple(support.selected(config).dtypes) or None
    key = (backend.name, device, dtypes)
    if key not in _OUTCOMES:
        records = support.edge_records_for(backend)
        _OUTCOMES[key] = records, run_edge_cases(backend, device, dtypes, records=records)
    return _OUTCOMES[key]


def _replay(backend, case, mode, dtype: str, device: str) -> str:
    """The case's inputs saved for `bnconf replay` (which judges them against the oracle's values)."""
    from bnconf.adapters.protocol import declared_precision
    from bnconf.conformance.edge import placement
    from bnconf.conformance.engine import prepare

    inputs = placement(backend).inputs(prepare(case.inputs(mode, backend.convention), declared_precision(backend, dtype, device)))
    return support.replay(backend, mode, inputs, dtype, device)


def test_edge_case(backend, device, dtype, case, mode, request):
    from bnconf.conformance.edge import unexplained
    from bnconf.spec.edge_cases import Refusal

    support.skip_unless_runs(backend, device)
    _, every = outcomes_of(backend, device, request.config)
    outcomes = [o for o in every if (o.case, o.mode, o.dtype) == (case.id, mode.value, dtype)]
    if not outcomes:
        pytest.skip(f"{backend.name} cannot express {case.id} in {mode.value} {dtype} (its input checks refuse it)")
    where = f"{backend.name} {device} {dtype} {case.id} {mode.value}"
    wrong = unexplained(outcomes)
    if wrong:
        expectation = case.expect[mode]
        lines = [f"{where}: {o.outcome} (neither as the spec says nor recorded)" for o in wrong]
        lines.append(f"  the spec: {case.statement} ({expectation.refusal_for(backend.convention).value})")
        if expectation.refusal_for(backend.convention) is not Refusal.REQUIRED:
            lines.append("replay (the same inputs, against the oracle's values): " + _replay(backend, case, mode, dtype, device))
        pytest.fail("\n".join(lines), pytrace=False)


def test_edge_records(backend, device, request):
    """Every record that covered one of the backend's edge outcomes explains at least one outcome, of this backend
    or of another selected backend its name pattern matches (a family's record may explain a sibling only)."""
    from bnconf.conformance.edge import stale_records
    from bnconf.conformance.records import matches

    support.skip_unless_runs(backend, device)
    records, outcomes = outcomes_of(backend, device, request.config)
    stale = stale_records(outcomes, [backend.name], records)
    if stale:
        s = support.selected(request.config)
        siblings = [(b, s.first_device(b)) for b in s.backends
                    if b is not backend and any(matches(b.name, r.backends) for r in stale)]
        explained = {o.recorded for b, d in siblings if d is not None and not support.unavailable(b, d)
                     for o in outcomes_of(b, d, request.config)[1]}
        stale = [r for r in stale if r.id not in explained]
    if stale:
        pytest.fail(f"{backend.name} {device}: recorded edge behaviour(s) {', '.join(r.id for r in stale)} covered "
                    "edge cases and explained none of them (stale: the backend changed); update or remove them",
                    pytrace=False)
