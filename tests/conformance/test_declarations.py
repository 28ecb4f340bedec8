"""Declarations real backends need (issue 15 item 2), end to end through the battery:

- eps and momentum held in a narrower format than the data (`Precision.attributes`): a NumPy backend that
  rounds them to float32 conforms in float64 when it declares it, and is NON-CONFORMANT without;
- mixed layouts (`param_dtypes`, `Request.param_dtype`): float16 x, y, dx with float32 gamma, beta, running
  statistics, dgamma and dbeta run as their own cells ("float16/float32"), where a backend that silently holds
  gamma, beta and the running statistics in float16 is NON-CONFORMANT although its own float16 layout conforms;
- half arithmetic for half data (`compute="float16"`) is a declaration like any other.
"""

import shlex
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, find, settings

from bnconf.adapters.protocol import Request, check_request, declared_precision
from bnconf.adapters.registry import load
from bnconf.conformance import selection, strategies
from bnconf.conformance.battery import run_cell
from bnconf.conformance.engine import prepare, request
from bnconf.conformance.mutants import REFERENCE
from bnconf.conformance.status import RowVerdict
from bnconf.spec import InputError, Inputs, Mode, RunningStats, precision_for

FIXTURE = Path(__file__).parents[1] / "fixtures" / "declared.py"
MODES = sorted(REFERENCE.modes, key=lambda m: m.value)  # train/eval forward, train backward
EXAMPLES, SEED = 25, 1


def fixture(name: str):
    (backend,) = load(f"{FIXTURE}:{name}")
    return backend


def failing(cell) -> list[str]:
    """The cell's NON-CONFORMANT quantities; the cell must have run without an error."""
    assert cell.status.value == "ran", cell.reason
    return [r.quantity for r in cell.rows if r.verdict is RowVerdict.NON_CONFORMANT]


def cell(backend, dtype: str, mode: Mode):
    return run_cell(backend, "cpu", dtype, mode, EXAMPLES, SEED)


# ------------------------------------------------------------------ eps and momentum held as float32


def test_drawn_eps_and_momenta_include_values_float32_cannot_hold():
    """The battery can see a float32 attribute at all: it draws eps and momenta that float32 rounds."""
    search = settings(max_examples=200, database=None, suppress_health_check=list(HealthCheck))
    assert float(np.float32(find(strategies.eps_values(), lambda e: float(np.float32(e)) != e, settings=search))) != 0
    find(strategies.momenta(), lambda m: float(np.float32(m)) != m, settings=search)


def test_prepare_rounds_eps_and_momentum_to_the_declared_attribute_format():
    inputs = Inputs(x=np.array([[0.1, 0.2], [0.3, 0.5]]), axis=1, eps=1e-5, momentum=0.1,
                    running=RunningStats(np.zeros(2), np.ones(2), 0))
    held = prepare(inputs, precision_for("float64", attributes="float32"))
    assert held.eps == float(np.float32(1e-5)) != 1e-5 and held.momentum == float(np.float32(0.1)) != 0.1
    exact = prepare(inputs, precision_for("float64"))
    assert (exact.eps, exact.momentum) == (1e-5, 0.1)
    assert prepare(Inputs(x=inputs.x, axis=1, eps=1e-3), precision_for("float64", attributes="float16")).momentum is None


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_float32_attributes_declared_conform_in_float64(mode):
    assert failing(cell(fixture("ATTRIBUTES_DECLARED"), "float64", mode)) == []


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_float32_attributes_undeclared_are_non_conformant_in_float64(mode):
    """The same backend without the declaration: a float64 row no float64 rounding explains."""
    bad = failing(cell(fixture("ATTRIBUTES_UNDECLARED"), "float64", mode))
    expected = {Mode.TRAIN_FORWARD: {"running_mean", "running_var", "y"}, Mode.EVAL_FORWARD: {"y"},
                Mode.TRAIN_BACKWARD: {"dx", "dgamma"}}[mode]
    assert bad and set(bad) <= expected | {"saved_invstd"}, bad


def test_float32_attributes_undeclared_conform_in_float32():
    """In float32 the rounding of eps and momentum is inside the float32 model anyway."""
    assert failing(cell(fixture("ATTRIBUTES_UNDECLARED"), "float32", Mode.TRAIN_FORWARD)) == []


# ------------------------------------------------------------------ mixed layouts


def test_cells_add_one_per_declared_layout_and_leave_other_backends_as_they_were():
    half = fixture("HALF_DATA")
    dtypes = [d for _, _, d, _ in selection.cells([half], [], [])]
    assert list(dict.fromkeys(dtypes)) == ["float32", "float16", "float16/float32"]
    assert dtypes.count("float16/float32") == len(half.modes)
    assert {d for _, _, d, _ in selection.cells([half], [], ["float32"])} == {"float32"}
    plain = [(REFERENCE, "cpu", d, m) for d in REFERENCE.dtypes for m in MODES]
    assert selection.cells([REFERENCE], [], []) == plain


def test_a_mixed_layout_reaches_the_backend_and_the_error_model():
    half = fixture("HALF_DATA")
    r = request(Inputs(x=np.ones((2, 1)), axis=1, eps=1e-3), "float16/float32", "cpu")
    assert (r.dtype, r.param_dtype) == ("float16", "float32")
    assert request(Inputs(x=np.ones((2, 1)), axis=1, eps=1e-3), "float16", "cpu").param_dtype is None
    assert declared_precision(half, "float16", "cpu").stats == "float16"  # its own layout
    mixed = declared_precision(half, "float16/float32", "cpu")
    assert (mixed.dtype, mixed.compute, mixed.stats) == ("float16", "float32", "float32")
    gamma = prepare(Inputs(x=np.ones((2, 1)), axis=1, eps=1e-3, gamma=np.array([0.1]), beta=np.zeros(1)), mixed).gamma
    assert gamma[0] == float(np.float32(0.1)) != float(np.float16(0.1))


def test_check_request_refuses_a_layout_the_backend_does_not_declare():
    half, x = fixture("HALF_DATA"), np.ones((2, 1))
    check_request(half, Mode.TRAIN_FORWARD, Request(x=x, axis=1, eps=1e-3, dtype="float16", param_dtype="float32"))
    with pytest.raises(InputError, match="param_dtype 'float64' is not supported for float16 data"):
        check_request(half, Mode.TRAIN_FORWARD, Request(x=x, axis=1, eps=1e-3, dtype="float16", param_dtype="float64"))
    with pytest.raises(InputError, match="none declared"):
        check_request(REFERENCE, Mode.TRAIN_FORWARD, Request(x=x, axis=1, eps=1e-3, dtype="float32", param_dtype="float16"))
    with pytest.raises(InputError, match="float17"):
        check_request(half, Mode.TRAIN_FORWARD, Request(x=x, axis=1, eps=1e-3, dtype="float16", param_dtype="float17"))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_half_data_with_float32_parameters_conforms_in_the_mixed_cell(mode):
    result = cell(fixture("HALF_DATA"), "float16/float32", mode)
    assert result.dtype == "float16/float32"
    assert failing(result) == []


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_parameters_cast_to_float16_hide_in_the_own_layout(mode):
    assert failing(cell(fixture("HALF_DATA_PARAMS_CAST"), "float16", mode)) == []


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_parameters_cast_to_float16_are_non_conformant_in_the_mixed_cell(mode):
    bad = failing(cell(fixture("HALF_DATA_PARAMS_CAST"), "float16/float32", mode))
    assert bad and set(bad) <= {"y", "dx", "running_mean", "running_var", "dgamma", "dbeta"}, bad


def test_a_mixed_cell_runs_isolated_and_shows_its_layout_in_the_report(tmp_path):
    from bnconf.conformance.isolation import run_isolated
    from bnconf.reports.render import _cell_rows as conformance_rows

    half = fixture("HALF_DATA_PARAMS_CAST")
    cells = [(half, "cpu", "float16/float32", Mode.TRAIN_FORWARD)]
    results, _ = run_isolated(cells, 10, SEED, crash_dir=tmp_path / "crashes", cases_dir=tmp_path / "cases")
    (result,) = results
    assert result.dtype == "float16/float32" and failing(result)
    assert {row[2] for row in conformance_rows(results)} == {"float16/float32"}
    # the mixed-layout finding replays as it was found
    from bnconf.reports.cli import main

    lines = [r.replay for r in result.rows if r.verdict is RowVerdict.NON_CONFORMANT]
    assert lines and all(main(shlex.split(line)[1:]) == 1 for line in lines)


# ------------------------------------------------------------------ half arithmetic


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_half_arithmetic_declared_conforms(mode):
    assert failing(cell(fixture("HALF_ARITHMETIC"), "float16", mode)) == []


def test_half_arithmetic_undeclared_is_non_conformant():
    assert "y" in failing(cell(fixture("HALF_ARITHMETIC_UNDECLARED"), "float16", Mode.TRAIN_FORWARD))
