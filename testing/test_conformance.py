"""Every selected backend against the oracle, one test per (backend, device, dtype, mode):
`test_conformance[my_bn-cpu-float32-train_forward]`.

Nothing here is written per backend: the cells come from what each backend declares, the inputs from its
convention, the tolerance from the error model for its declared precision. A case covered by a known
discrepancy (bnconf's, or the project's own from --bnconf-records) is checked against the recorded behaviour
instead, for the quantities the record names. A failure's first line names the quantities that failed; its
last line replays the shrunk case (`bnconf replay FOLDER --backend TARGET`).
"""

import pytest

from bnconf.testing import support


def pytest_generate_tests(metafunc):
    s = support.selected(metafunc.config)
    if metafunc.definition.name == "test_conformance":
        metafunc.parametrize("backend, device, dtype, mode", [
            pytest.param(*cell, id=f"{cell[0].name}-{cell[1]}-{cell[2]}-{cell[3].value}",
                         marks=[pytest.mark.gpu] if cell[1] in ("cuda", "gpu") else [])
            for cell in s.cells()
        ])
    if metafunc.definition.name == "test_backend_families_load":
        metafunc.parametrize("family, reason", [pytest.param(u.name, u.reason, id=u.name) for u in s.unavailable]
                             or [pytest.param(None, None, id="all")])


def test_backend_families_load(family, reason):
    """A backend family that did not load (its framework is not installed, or its entry point fails) is
    skipped with the reason."""
    if family is not None:
        pytest.skip(f"{family}: {reason}")


def _describe(c) -> str:
    return (f"{c.verdict.value} {c.detail}: max error/bound {c.max_ratio:.3g} at {c.worst_index} "
            f"(observed {c.observed!r}, expected {c.expected!r}, bound {c.bound!r})")


def test_conformance(backend, device, dtype, mode, request):
    from hypothesis import given, note, target
    from hypothesis import strategies as st

    from bnconf.conformance.battery import target_score
    from bnconf.conformance.cases import case_inputs
    from bnconf.conformance.engine import assess

    support.skip_unless_runs(backend, device)
    support.ran(backend)
    registry = support.discrepancies_for(backend)
    cell = f"{backend.name} {device} {dtype} {mode.value}"

    @support.hypothesis_settings(support.examples(request.config, 20, 3))  # a twentieth of the profile per cell
    @given(data=st.data())
    def check(data):
        inputs = data.draw(case_inputs(backend, mode, dtype), label="inputs")
        try:
            a = assess(backend, mode, inputs, dtype, device, registry=registry)
        except Exception as e:
            if support.is_final():
                e.add_note(f"{cell}: the backend (or judging its outputs) raised\nreplay: "
                           + support.replay(backend, mode, inputs, dtype, device))
            raise
        target(target_score(max((c.max_ratio for c in a.declared.values()), default=0.0)), label="max error / bound")
        if a.discrepancy is not None:
            note(f"known discrepancy {a.discrepancy.id}: {a.discrepancy.explanation}")
            if a.discrepancy_seen:
                support.needed(a.discrepancy.id)
        problems = {q: _describe(c) for q, c in a.problems().items()}
        if a.wrote_into:
            problems["inputs"] = a.wrote_into
        if problems:
            lines = [f"{cell}: " + "; ".join(f"{q} {text.split(':')[0]}" for q, text in problems.items())]
            lines += [f"  {q}: {text}" for q, text in problems.items()]
            if a.discrepancy is not None:
                lines.append(f"  (known discrepancy {a.discrepancy.id} applied to {', '.join(a.discrepancy.quantities)})")
            if support.is_final():  # the shrunk example, saved once
                lines.append("replay: " + support.replay(backend, mode, inputs, dtype, device))
            raise AssertionError("\n".join(lines))

    support.keyed(check, request.node.nodeid)()
