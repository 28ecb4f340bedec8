"""The suite's power to detect mistakes: each deliberately wrong backend is caught on the quantity its
mistake affects, by the same strategies and comparisons the real backends face; the correct reference passes."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import find
from hypothesis import strategies as st

from bnconf.conformance.cases import case_inputs
from bnconf.conformance.engine import assess
from bnconf.conformance.mutants import MUTANTS, REFERENCE

SEARCH = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


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
        return m.quantity in assess(m.backend, m.mode, inputs, "float32", "cpu").problems()

    find(case_inputs(m.backend, m.mode, "float32"), caught, settings=SEARCH)  # raises NoSuchExample if never caught
