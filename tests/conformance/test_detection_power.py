"""The suite's power to detect mistakes and to name them: each deliberately wrong backend is caught on the quantity
its mistake affects, by the same strategies and comparisons the real backends face, and the battery's row for that
quantity is diagnosed by the mistake's name (spec/diagnosis.py); backends computing in half precision while declaring
float32 are named by a half-precision hypothesis on every row, never a one-pass variance; the correct reference
passes."""

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import find
from hypothesis import strategies as st

from bnconf.conformance.battery import run_cell
from bnconf.conformance.cases import case_inputs
from bnconf.conformance.engine import assess
from bnconf.conformance.mutants import HALF_PRECISION, HALF_PRECISION_BACKENDS, MUTANTS, REFERENCE
from bnconf.conformance.status import RowVerdict

# the first catch is enough: no shrinking (each example runs the backend and, where it fails, the diagnosis)
SEARCH = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", sorted(REFERENCE.modes, key=lambda m: m.value))
@given(data=st.data())
def test_the_correct_reference_passes(mode, dtype, data):
    a = assess(REFERENCE, mode, data.draw(case_inputs(REFERENCE, mode, dtype)), dtype, "cpu")
    assert not a.problems()


@pytest.mark.parametrize("mistake", list(MUTANTS))
def test_each_mistake_is_caught_on_the_quantity_it_affects(mistake):
    m = MUTANTS[mistake]

    def caught(inputs) -> bool:
        return m.quantity in assess(m.backend, m.mode, inputs, m.dtype, "cpu").problems()

    find(case_inputs(m.backend, m.mode, m.dtype), caught, settings=SEARCH)  # raises NoSuchExample if never caught


DIAGNOSIS_EXAMPLES = 12  # per cell: enough failing cases to tell the hypotheses apart, cheap on two slow cores


def _non_conformant(m) -> dict:
    cell = run_cell(m.backend, "cpu", m.dtype, m.mode, examples=DIAGNOSIS_EXAMPLES, run_seed=0)
    return {r.quantity: r for r in cell.rows if r.verdict is RowVerdict.NON_CONFORMANT}


@pytest.mark.parametrize("mistake", list(MUTANTS))
def test_each_mistake_is_named_by_the_battery(mistake):
    m = MUTANTS[mistake]
    row = _non_conformant(m).get(m.quantity)
    assert row is not None, f"{m.quantity} was not caught"
    assert row.diagnosis == m.diagnosis, f"{m.quantity}: {row.diagnosis} ({row.diagnosis_note})"
    assert row.diagnosis_note.startswith("error/bound ")


@pytest.mark.parametrize("backend", list(HALF_PRECISION_BACKENDS))
def test_half_precision_arithmetic_is_named_half_precision_on_every_row(backend):
    rows = _non_conformant(HALF_PRECISION_BACKENDS[backend])
    assert rows
    assert {q: r.diagnosis for q, r in rows.items() if r.diagnosis not in HALF_PRECISION} == {}
