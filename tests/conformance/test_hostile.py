"""No false pass from a hostile backend (issue 14, items 2, 3, 5, 6): outputs bnconf cannot judge, a backend that
writes into its inputs, an infinite error/bound ratio, NaN outputs and a non-deterministic backend are each
reported as what they are, and never crash the battery; the battery's statuses and verdicts are enums."""

import importlib.util
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from bnconf.adapters.protocol import OutputError, Outputs, Request
from bnconf.conformance import inference_probes as probes
from bnconf.conformance.battery import CellResult, QuantityRow, run_cell, target_score
from bnconf.conformance.run import cell_failures
from bnconf.conformance.engine import assess
from bnconf.conformance.inference import infer
from bnconf.conformance.status import CellStatus, RowVerdict
from bnconf.spec import Inputs, Mode, RunningStats

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hostile.py"
_spec = importlib.util.spec_from_file_location("hostile", FIXTURE)
hostile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile)

TRAIN = Mode.TRAIN_FORWARD
X = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, -1.0]])
CASE = Inputs(x=X, axis=1, eps=1e-5, momentum=0.1, running=RunningStats(np.zeros(2), np.ones(2), 0))


def _cell(backend, examples: int = 6, mode=TRAIN) -> CellResult:
    return run_cell(backend, "cpu", "float64", mode, examples, run_seed=0)


def _row(cell: CellResult, quantity: str) -> QuantityRow:
    return next(r for r in cell.rows if r.quantity == quantity)


# ---------------------------------------------------------------- 2. outputs bnconf cannot judge


@pytest.mark.parametrize("backend, dtype", [(hostile.COMPLEX, "complex128"), (hostile.STRINGS, "<U"),
                                            (hostile.INTEGERS, "int64"), (hostile.BOOLEANS, "bool"),
                                            (hostile.OBJECTS, "object")])
def test_outputs_that_are_not_real_floats_are_the_cells_error_naming_quantity_dtype_and_fix(backend, dtype):
    with pytest.raises(OutputError, match=f"y is a ndarray of dtype {dtype}"):
        assess(backend, TRAIN, CASE, "float64", "cpu")
    cell = _cell(backend)
    assert cell.status is CellStatus.ERROR and cell_failures([cell])
    assert "returned outputs bnconf cannot judge" in cell.reason and f"dtype {dtype}" in cell.reason
    assert "return it as a real floating-point NumPy array" in cell.reason


def test_an_output_of_the_wrong_shape_is_the_cells_error_with_the_expected_shape():
    cell = _cell(hostile.FLAT)
    assert cell.status is CellStatus.ERROR
    assert "y has shape" in cell.reason and "x's shape" in cell.reason and "return it in that shape" in cell.reason


def test_every_real_float_format_is_accepted_whatever_the_request_asked():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    r = Request(x=X, axis=1, eps=1e-5, dtype="float16")
    for fmt in (np.float16, np.float32, np.float64, ml_dtypes.bfloat16):
        got = Outputs(y=X.astype(fmt), saved_mean=np.zeros(2, fmt)).quantities(r)
        assert got["y"].dtype == np.float64 and np.array_equal(got["y"], X.astype(fmt).astype(np.float64))
    with pytest.raises(OutputError, match="saved_mean has shape"):
        Outputs(y=X, saved_mean=np.zeros(3)).quantities(r)


def test_a_returned_buffer_is_copied_so_the_backend_keeps_no_hold_on_what_is_judged():
    y = X.copy()
    got = Outputs(y=y).quantities()["y"]
    y[...] = 0.0
    assert np.array_equal(got, X)


# ---------------------------------------------------------------- 3. a backend that writes into its inputs


def test_a_backend_writing_into_x_is_reported_as_such_and_its_outputs_still_judged():
    a = assess(hostile.WRITES_X, TRAIN, CASE, "float64", "cpu")
    assert a.wrote_into.startswith("the backend wrote into its input x (6 of 6 values changed")
    assert not a.problems()  # it wrote after computing: the oracle saw the same inputs
    cell = _cell(hostile.WRITES_X)
    assert cell.status is CellStatus.ERROR and cell_failures([cell])
    assert "made the backend write into its inputs; first: the backend wrote into its input x" in cell.reason
    assert all(r.verdict is RowVerdict.CONFORMS for r in cell.rows)


def test_a_backend_updating_running_statistics_in_place_and_returning_them_is_reported_and_judged_right():
    a = assess(hostile.IN_PLACE, TRAIN, CASE, "float64", "cpu")
    assert "its input running_mean" in a.wrote_into and "running_var" in a.wrote_into
    assert set(a.declared) >= {"running_mean", "running_var"} and not a.problems()
    assert np.array_equal(CASE.running.mean, np.zeros(2)) and np.array_equal(CASE.running.var, np.ones(2))


def test_a_good_backend_writes_into_nothing():
    assert assess(hostile.GOOD, TRAIN, CASE, "float64", "cpu").wrote_into == ""


@pytest.mark.parametrize("backend", [hostile.WRITES_X, hostile.IN_PLACE])
def test_convention_inference_of_a_backend_writing_into_its_inputs_is_unharmed(backend):
    constants = [a.copy() for a in (probes.MOMENTUM_ROWS, probes.EPS_PROBE_VARS, probes.EPS_TRAIN_HALF_RANGE)]
    inference = infer(backend)
    assert inference.verdicts(backend.convention) == infer(hostile.GOOD).verdicts(backend.convention)
    assert all(v == "agrees" for v in inference.verdicts(backend.convention).values()), str(inference)
    assert all(np.array_equal(a, b) for a, b in zip(constants, (probes.MOMENTUM_ROWS, probes.EPS_PROBE_VARS,
                                                                probes.EPS_TRAIN_HALF_RANGE)))
    # the probes that decided each property are logged as the backend was given them, not as it left them
    x = inference.findings["momentum_style"].probes[0][1].x
    assert np.array_equal(probes.per_channel(x, 1), probes.MOMENTUM_ROWS)


def test_the_probes_shared_inputs_are_read_only():
    assert not any(a.flags.writeable for a in (probes.MOMENTUM_ROWS, probes.EPS_PROBE_VARS, probes.EPS_TRAIN_HALF_RANGE))


# ---------------------------------------------------------------- 5. infinite ratios, NaN outputs


def test_target_gets_a_finite_value_for_infinite_and_nan_ratios():
    assert target_score(2.5) == 2.5
    assert target_score(math.inf) == target_score(math.nan) == sys.float_info.max


def test_y_plus_one_is_non_conformant_with_its_infinite_ratio_never_a_crash():
    cell = _cell(hostile.PLUS_ONE)
    y = _row(cell, "y")
    assert cell.status is CellStatus.RAN
    assert y.verdict is RowVerdict.NON_CONFORMANT and y.failures == y.examples == 6
    assert y.max_ratio == math.inf and y.verdict_text == "NON-CONFORMANT (non-conformant)"
    assert "non-deterministic" not in y.detail  # ran twice, the same both times
    assert cell_failures([cell])


@pytest.mark.parametrize("isolation", [["--no-isolation"], []], ids=["in-process", "isolated"])
def test_a_report_on_y_plus_one_ends_non_conformant_with_the_row_not_a_crash(tmp_path, isolation):
    from bnconf.reports.cli import main

    # 6 examples: the first that meets a zero bound (an infinite ratio) under the default seed's shapes
    argv = ["report", "--backend", f"{FIXTURE}:PLUS_ONE", "--dtype", "float64", "--examples", "6",
            "--pair-examples", "0", "--no-edge-cases", "--out", str(tmp_path), *isolation]
    assert main(argv) == 1
    cells = json.loads((tmp_path / "report.json").read_text())["cells"]
    train = next(c for c in cells if c["mode"] == "train_forward")
    y = next(r for r in train["rows"] if r["quantity"] == "y")
    assert train["status"] == "ran" and y["verdict"] == "NON-CONFORMANT" and y["max_ratio"] == "inf"


def test_nan_outputs_are_a_nonfinite_mismatch():
    a = assess(hostile.NANS, TRAIN, CASE, "float64", "cpu")
    assert set(a.problems()) == {"y"}
    y = _row(_cell(hostile.NANS), "y")
    assert y.verdict is RowVerdict.NON_CONFORMANT and y.failure == "non-finite mismatch"
    assert "observed nan" in y.detail and "non-deterministic" not in y.detail  # NaN where NaN: the same twice


# ---------------------------------------------------------------- 6. non-determinism


def test_a_failing_case_runs_twice_and_a_non_deterministic_backend_is_named():
    cell = _cell(hostile.Noisy(every=10), examples=20)  # noise on calls 10, 20...: each failing case reruns clean
    y = _row(cell, "y")
    assert y.verdict is RowVerdict.NON_CONFORMANT
    assert "non-deterministic: two runs of the same input differ: y by up to 0.5" in y.detail


# ---------------------------------------------------------------- statuses and verdicts as enums


def test_cell_status_and_row_verdict_are_enums_that_serialise_as_their_words():
    cell = _cell(hostile.PLUS_ONE, examples=2)
    assert isinstance(cell.status, CellStatus) and all(isinstance(r.verdict, RowVerdict) for r in cell.rows)
    doc = json.loads(json.dumps(asdict(cell)))
    assert doc["status"] == "ran"
    row = next(r for r in doc["rows"] if r["quantity"] == "y")
    assert row["verdict"] == "NON-CONFORMANT" and row["failure"] == "non-conformant"
    again = CellResult(**{**doc, "rows": [QuantityRow(**r) for r in doc["rows"]]})  # as a worker's result is read
    assert again.status is CellStatus.RAN and _row(again, "y").verdict is RowVerdict.NON_CONFORMANT


def test_an_older_reports_verdict_text_is_read_into_verdict_and_failure():
    row = QuantityRow("y", "NON-CONFORMANT (momentum reversed)")
    assert row.verdict is RowVerdict.NON_CONFORMANT and row.failure == "momentum reversed"
    assert row.verdict_text == "NON-CONFORMANT (momentum reversed)"
    assert QuantityRow("y", "known discrepancy").verdict_text == "known discrepancy"
    with pytest.raises(ValueError):
        QuantityRow("y", "NONSENSE")


def test_the_cell_rule_is_decided_by_the_enums():
    ran = lambda *rows: CellResult("b", "c", "cpu", "float64", "train_forward", "ran", rows=list(rows))  # noqa: E731
    assert not cell_failures([ran(QuantityRow("y"), QuantityRow("dx", RowVerdict.KNOWN), QuantityRow("dy", "ill-conditioned"))])
    assert cell_failures([ran(QuantityRow("y", RowVerdict.NON_CONFORMANT))])
    assert not cell_failures([CellResult("b", "c", "cpu", "float64", "train_forward", CellStatus.UNSUPPORTED)])
    for status in ("error", "crashed", "timed out", "out of memory", "not run"):
        assert cell_failures([CellResult("b", "c", "cpu", "float64", "train_forward", status)])
