"""Every row says what it saw (issue 16, items 2 and 3): observed and expected at the worst element, the relative
error, the examples judged, a detail for a NON-CONFORMANT row that names nothing, a reason for ill-conditioned
elements, a ULP figure only where it means something, and a constant channel never shown as |mean|/std = 0."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bnconf.conformance.battery import QuantityRow, _record, conditioning, describe, run_cell
from bnconf.conformance.engine import Assessment
from bnconf.conformance.status import RowVerdict
from bnconf.spec import Inputs, Mode, RunningStats, compare, convention, expected, precision_for
from bnconf.spec.ulp import ULP_LIMIT
from bnconf.spec.verdict import quantity_format

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hostile.py"
_spec = importlib.util.spec_from_file_location("hostile", FIXTURE)
hostile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile)

TORCH = convention("torch.nn.functional.batch_norm")
P = precision_for("float16")


def _assessment(x: np.ndarray, shift: float = 0.0) -> tuple[Assessment, Inputs]:
    """A float16 training forward returning the oracle's values, y moved by `shift` at element (0, 0)."""
    i = Inputs(x=x, axis=1, eps=1e-5)
    declared = {}
    for q, e in expected(Mode.TRAIN_FORWARD, i, TORCH, P).items():
        value = e.value.copy()
        if q == "y":
            value[0, 0] += shift
        declared[q] = compare(q, value, e, quantity_format(q, P))
    return Assessment(declared), i


def _rows(*cases) -> dict[str, QuantityRow]:
    rows: dict[str, QuantityRow] = {}
    for a, i in cases:
        _record(rows, a, i)
    return rows


def _x(second: np.ndarray) -> np.ndarray:
    return np.stack([np.linspace(-1.0, 2.0, second.size), second], axis=1)


def test_a_row_keeps_observed_expected_relative_error_and_judged_examples():
    rows = _rows(_assessment(_x(np.linspace(0.5, 1.5, 16))), _assessment(_x(np.linspace(3.0, 1.0, 16))))
    y = rows["y"]
    assert y.verdict is RowVerdict.CONFORMS and y.examples == y.judged == 2
    assert y.observed is not None and y.expected is not None and y.relative_error is not None
    assert y.max_ulp is not None and y.max_ulp <= ULP_LIMIT
    assert y.detail == "" and y.ill_reason == "" and y.ill_examples == 0


def test_a_non_conformant_row_that_names_nothing_says_what_it_saw():
    rows = _rows(_assessment(_x(np.linspace(0.5, 1.5, 16)), shift=0.5))
    y = rows["y"]
    assert y.verdict is RowVerdict.NON_CONFORMANT
    assert y.detail.startswith("at (0, 0): observed ") and y.detail.endswith("1 of 32 element(s) outside their bound")
    assert y.observed - y.expected == pytest.approx(0.5)
    assert y.relative_error == pytest.approx(0.5 / abs(y.expected))


def test_ill_conditioned_rows_say_why_and_count_their_examples():
    constant = _assessment(np.full((16, 1), 3000.0))  # saved_invstd: nothing checkable
    fine = _assessment(np.linspace(-1.0, 2.0, 16)[:, None])
    half = _assessment(_x(np.full(16, 3000.0)))  # y: one of two channels unchecked
    rows = _rows(fine, half, constant)
    s = rows["saved_invstd"]
    assert s.verdict is RowVerdict.ILL_CONDITIONED and s.ill_examples == 2 and s.judged == 2 and s.examples == 3
    assert s.ill_reason.startswith("1 of 1 element(s) unchecked") and "constant channel" in s.ill_reason
    y = _rows(fine, half)["y"]
    assert y.verdict is RowVerdict.CONFORMS and y.ill_examples == 1
    assert y.ill_reason.startswith("16 of 32 element(s) unchecked, 1 of 2 channel(s); channel 1: ")


def test_describe_never_shows_a_constant_channel_as_a_ratio_of_zero():
    offset = np.stack([np.linspace(9.0, 11.0, 8), np.full(8, 4.0)], axis=1)
    text = describe(Inputs(x=offset, axis=1, eps=1e-5))
    assert "max|mean|/std=15.3 constant_channels=1" in text
    assert "max|mean|/std=none constant_channels=1" in describe(Inputs(x=np.full((8, 1), 4.0), axis=1, eps=1e-5))
    nan = offset.copy()
    nan[0, 0] = np.nan
    assert "max|mean|/std=none constant_channels=1 nonfinite_channels=1" in describe(Inputs(x=nan, axis=1, eps=1e-5))
    # the accuracy plot keeps leaving such cases out: a constant channel says nothing about conditioning
    assert conditioning(Inputs(x=offset, axis=1, eps=1e-5)) == (0.0, 8)
    assert conditioning(Inputs(x=offset[:, :1], axis=1, eps=1e-5))[0] == pytest.approx(15.27, rel=1e-3)


def test_the_battery_rows_of_a_wrong_and_a_correct_backend_carry_their_facts():
    wrong = run_cell(hostile.PLUS_ONE, "cpu", "float64", Mode.TRAIN_FORWARD, 4, run_seed=0)
    y = next(r for r in wrong.rows if r.quantity == "y")
    assert y.verdict is RowVerdict.NON_CONFORMANT and y.judged == y.examples > 0
    assert y.detail and y.observed - y.expected == pytest.approx(1.0)
    good = run_cell(hostile.GOOD, "cpu", "float32", Mode.TRAIN_FORWARD, 6, run_seed=0)
    for row in good.rows:
        assert row.verdict is not RowVerdict.NON_CONFORMANT, row
        assert row.max_ulp is None or row.max_ulp <= ULP_LIMIT, row
        assert 0 < row.judged <= row.examples or row.verdict is RowVerdict.ILL_CONDITIONED, row
