"""The edge-case battery (conformance/edge.py) on every selected backend (the built-ins and installed entry points,
or --bnconf-backend): each outcome agrees with the spec's edge cases or is recorded (conformance/known/edge.py), and
no record is stale (`test_edge_case`, the installed suite's `bnconf.testing.test_edge_cases`, collected here); plus
the records' matching and the report table, framework-free."""

from dataclasses import replace
import json

import pytest

from bnconf.adapters.protocol import OutputError
from bnconf.conformance.discrepancies import matches
from bnconf.conformance.edge import (
    AGREES, WITHIN_ROUNDING, EdgeOutcome, EdgeRecord, as_row, describe_exception, edge_records, is_refusal,
    run_edge_cases, stale_records, unexplained,
)
from bnconf.conformance.refusal import Behaviour, behaviour_of
from bnconf.reports.edge_table import edge_matrix_rows, edge_section_rows, edge_summary
from bnconf.spec import Mode
from bnconf.spec.edge_cases import CASES
from bnconf.testing.test_edge_cases import pytest_generate_tests, test_edge_case, test_edge_records  # noqa: F401


def _o(backend="fw.bn[x]", case="nan-in-x", mode="train_forward", agrees=False,
       outcome="y finite (spec: NaN in channel 0)", dtype="float32", recorded=None, behaviour=Behaviour.VALUES,
       precision="") -> EdgeOutcome:
    return EdgeOutcome(backend, "cpu", dtype, case, mode, agrees, outcome, recorded, behaviour, precision)


def test_records_match_by_backend_case_outcome_mode_and_dtype():
    r = EdgeRecord(id="r", backends="fw.*[x]", case="*-in-x", outcome="y finite*", explanation="", evidence="",
                   modes=(Mode.TRAIN_FORWARD,), dtypes=("float32",))
    assert r.matches(_o())
    assert r.matches(_o(case="inf-in-x"))
    assert not r.matches(_o(backend="fw.bn[y]"))  # brackets are literal
    assert not r.matches(_o(mode="eval_forward"))
    assert not r.matches(_o(dtype="float16"))
    assert not r.matches(_o(outcome="y NaN in every channel (spec: NaN in channel 0)"))
    by_predicate = EdgeRecord(id="p", backends="*", case="nan-in-x", outcome=lambda text: "finite" in text,
                              explanation="", evidence="")
    assert by_predicate.matches(_o())


def test_a_record_that_explains_nothing_it_covered_is_stale_and_one_that_covered_nothing_is_not():
    used = EdgeRecord(id="used", backends="fw.*", case="*", outcome="*", explanation="", evidence="")
    unused = EdgeRecord(id="unused", backends="fw.*", case="gamma-zero", outcome="*", explanation="", evidence="")
    elsewhere = EdgeRecord(id="elsewhere", backends="other.*", case="*", outcome="*", explanation="", evidence="")
    other_dtype = EdgeRecord(id="float16 only", backends="fw.*", case="gamma-zero", outcome="*", explanation="",
                             evidence="", dtypes=("float16",))
    outcomes = [_o(recorded="used"), replace(_o(), case="gamma-zero", agrees=True, outcome="agrees")]
    records = (used, unused, elsewhere, other_dtype)
    assert [r.id for r in stale_records(outcomes, ["fw.bn[x]"], records)] == ["unused"]


def test_every_record_names_a_case_and_has_evidence():
    ids = [r.id for r in edge_records()]
    assert len(ids) == len(set(ids))
    for r in edge_records():
        assert r.explanation and r.evidence, r.id
        assert any(matches(case, r.case) for case in CASES), r.id


def test_outcomes_serialize():
    row = as_row(_o(recorded="r"))
    assert json.loads(json.dumps(row)) == row
    assert set(row) == {"backend", "device", "dtype", "case", "mode", "agrees", "outcome", "recorded", "behaviour",
                        "precision"}
    assert row["behaviour"] == "values"


def test_an_exception_from_a_child_process_names_where_it_was_raised():
    e = ValueError("bad\nmore lines")
    e.add_note('raised in the child process of x:\nTraceback ...\n'
               '  File "/somewhere/keras/src/ops/nn.py", line 3, in f\n')
    assert describe_exception(e) == "raises ValueError: bad"


def test_the_edge_table_merges_modes_and_shows_refusals_and_records():
    outcomes = [
        _o(case="nan-in-x", mode="train_forward", agrees=True, outcome="returns the spec's values"),
        _o(case="nan-in-x", mode="eval_backward", outcome="dx NaN in channel 0 (spec: finite)", recorded="leak"),
        _o(case="single-value-untracked", agrees=True, outcome="raises ValueError: Expected more than 1 value"),
        _o(case="gamma-zero", agrees=True, outcome="returns the spec's values"),
        _o(backend="other", case="gamma-zero", agrees=True, outcome="returns the spec's values"),
    ]
    header, rows = edge_section_rows(outcomes)
    assert header == ["backend", "device", "dtype", "case", "outcome", "recorded", "precision"]
    assert rows == [
        ["fw.bn[x]", "cpu", "float32", "nan-in-x", "eval backward: dx NaN in channel 0 (spec: finite)", "leak", ""],
        ["fw.bn[x]", "cpu", "float32", "single-value-untracked",
         "agrees (raises ValueError: Expected more than 1 value)", "", ""],
        ["fw.bn[x]", "cpu", "float32", "gamma-zero", "agrees", "", ""],
        ["other", "cpu", "float32", "gamma-zero", "agrees", "", ""],
    ]
    assert edge_section_rows([as_row(o) for o in outcomes]) == (header, rows)  # from a JSON report too
    header, grouped = edge_section_rows(outcomes, grouped=True)
    assert header == ["case", "outcome", "recorded", "precision", "backends"]
    assert grouped[-1] == ["gamma-zero", "agrees", "", "", "fw.bn[x] (cpu, float32), other (cpu, float32)"]
    assert edge_summary(outcomes) == {"outcomes": 5, "agree": 4, "recorded": 1, "unexplained": 0,
                                      "within_rounding": 0, "refusals": 0, "crashes": 0}


def test_the_edge_table_shows_precision_apart_from_semantics():
    note = "y in channel 2: 1.70798 where the spec has 1.70833: 2.1 × the declared precision's bound, within float16"
    outcomes = [_o(case="gamma-zero", agrees=True, outcome=WITHIN_ROUNDING, precision=note),
                _o(case="gamma-zero", mode="eval_forward", agrees=True, outcome=AGREES)]
    header, rows = edge_section_rows(outcomes)
    assert rows == [["fw.bn[x]", "cpu", "float32", "gamma-zero", "agrees within rounding", "", f"train forward: {note}"]]
    assert edge_matrix_rows(outcomes)[1] == [["fw.bn[x]", "agrees (rounding)"]]
    assert edge_summary(outcomes)["within_rounding"] == 1
    old = [{k: v for k, v in as_row(o).items() if k not in ("behaviour", "precision")} for o in outcomes[1:]]
    assert edge_matrix_rows(old)[1] == [["fw.bn[x]", "agrees"]]  # a JSON report written before these fields


def test_a_value_error_numpy_raises_by_accident_is_not_a_refusal():
    import numpy as np

    try:
        np.abs(np.zeros((0, 3))).max(axis=0)  # what a careless backend hits on an empty batch
    except ValueError as e:
        assert not is_refusal(e)
    assert is_refusal(ValueError("momentum must be in [0, 1], got 1.5"))


def test_the_per_backend_matrix_says_agrees_recorded_differs_or_not_run():
    outcomes = [_o(case="nan-in-x", recorded="r"), _o(case="gamma-zero", agrees=True, outcome="agrees"),
                _o(backend="fw.bn[y]", case="nan-in-x"), _o(backend="fw.bn[y]", case="nan-in-x", agrees=True)]
    header, rows = edge_matrix_rows(outcomes)
    assert header == ["backend", "nan-in-x", "gamma-zero"]
    assert rows == [["fw.bn[x]", "recorded", "agrees"], ["fw.bn[y]", "DIFFERS", "-"]]


def test_the_matrix_names_refusals_and_crashes():
    outcomes = [_o(case="empty-batch", agrees=True, outcome="raises ValueError: empty", behaviour=Behaviour.REFUSAL),
                _o(case="empty-batch", mode="eval_forward", agrees=True, outcome=AGREES),
                _o(case="nan-in-x", outcome="raises TypeError: x (a crash, not a refusal)", behaviour=Behaviour.CRASH)]
    assert edge_matrix_rows(outcomes)[1] == [["fw.bn[x]", "agrees (refuses)", "DIFFERS (crashes)"]]
    assert edge_summary(outcomes) == {"outcomes": 3, "agree": 2, "recorded": 0, "unexplained": 1,
                                      "within_rounding": 0, "refusals": 1, "crashes": 1}


# ---------------------------------------------------------------- the one definition of a refusal


class InvalidArgumentError(Exception):
    """Named like TensorFlow's tf.errors.InvalidArgumentError (an OpError, not a ValueError)."""


class NodeInvalidArgument(InvalidArgumentError):
    pass


@pytest.mark.parametrize("e", [ValueError("momentum must be in [0, 1]"), ZeroDivisionError("division by zero"),
                               FloatingPointError("invalid value encountered in divide"), OverflowError("too large"),
                               InvalidArgumentError("scale must have 3 elements"), NodeInvalidArgument("by the MRO")],
                         ids=lambda e: type(e).__name__)
def test_refusals_are_value_arithmetic_and_invalid_argument_errors(e):
    assert is_refusal(e) and behaviour_of(e) is Behaviour.REFUSAL


@pytest.mark.parametrize("e", [TypeError("unsupported operand"), OutputError("y is a str"), IndexError("index 0"),
                               RuntimeError("running_mean should contain 3 elements not 2"), KeyError("y"),
                               AttributeError("no attribute 'numpy'")],
                         ids=lambda e: type(e).__name__)
def test_anything_else_is_a_crash(e):
    assert not is_refusal(e) and behaviour_of(e) is Behaviour.CRASH
