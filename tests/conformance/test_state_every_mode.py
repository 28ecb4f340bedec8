"""State observable in every mode (SPEC.md section 3): after an eval call a backend's running statistics, when it
returns them, are the ones it was given, bit for bit; a backend that updates them in eval is NON-CONFORMANT with
the quantity named, and every built-in adapter that keeps running statistics returns them after an eval forward."""

import json
from pathlib import Path

import numpy as np
import pytest

from bnconf.adapters.protocol import first_available_device
from bnconf.adapters.registry import BUILTIN, TargetError, load
from bnconf.conformance.edge import placement
from bnconf.conformance.records import matches
from bnconf.conformance.engine import assess, prepare, request
from bnconf.adapters.protocol import declared_precision
from bnconf.spec import Inputs, Mode, RunningStats, Verdict

FIXTURE = Path(__file__).parents[1] / "fixtures" / "stateful.py"
# built-ins whose API holds no state in eval: nothing to read back (SPEC.md section 1.6 makes returning it optional)
STATELESS_IN_EVAL = {
    "tf.compat.v1.nn.fused_batch_norm[*": "a functional op: the caller's statistics are immutable tensors",
}


def _validate(tmp_path, attribute: str) -> tuple[int, dict]:
    from bnconf.reports.cli import main

    code = main(["validate", f"{FIXTURE}:{attribute}", "--examples", "3", "--out", str(tmp_path)])
    return code, json.loads((tmp_path / "validate.json").read_text())


def test_a_backend_updating_its_running_statistics_in_eval_forward_fails_validate_naming_them(tmp_path):
    code, report = _validate(tmp_path, "UPDATES_IN_EVAL")
    assert code == 1
    rows = {(c["mode"], r["quantity"]): r for c in report["cells"] for r in c["rows"]}
    for q in ("running_mean", "running_var"):
        row = rows["eval_forward", q]
        assert row["verdict"] == "NON-CONFORMANT", row
        assert "eval forward changed the running statistics" in row["detail"], row
    assert rows["eval_forward", "y"]["verdict"] == "conforms"  # the output alone would never show the bug
    assert all(rows["train_forward", q]["verdict"] == "conforms" for q in ("y", "running_mean", "running_var"))


def test_the_same_backend_returning_its_statistics_unchanged_in_eval_passes_validate(tmp_path):
    code, report = _validate(tmp_path, "GOOD")
    assert code == 0
    rows = {(c["mode"], r["quantity"]): r["verdict"] for c in report["cells"] for r in c["rows"]}
    assert rows["eval_forward", "running_mean"] == rows["eval_forward", "running_var"] == "conforms"


# ---------------------------------------------------------------- every built-in that keeps running statistics


def _stateful_backends():
    out = []
    for family in sorted(BUILTIN):
        try:
            backends = load(BUILTIN[family][0])
        except TargetError as e:
            out.append(pytest.param(None, id=family, marks=pytest.mark.skip(reason=f"{family}: {e}")))
            continue
        out += [pytest.param(b, id=b.name) for b in backends
                if b.convention.tracks_running_stats and Mode.EVAL_FORWARD in b.modes]
    return out


def _eval_inputs(backend, dtype: str, device: str, mode: Mode) -> Inputs:
    """A small batch on the backend's rank and channel axis; running statistics far from the batch's, so that
    any update in eval moves them."""
    rng = np.random.default_rng(7)
    rows = rng.normal(3.0, 2.0, size=(6, 3))
    running = RunningStats(np.array([0.25, -1.5, 0.75]), np.array([0.5, 2.0, 1.25]), 3)
    i = Inputs(x=rows, axis=1, eps=1e-3, gamma=np.array([1.5, 0.5, -2.0]), beta=np.array([0.25, -1.0, 0.5]),
               running=running, momentum=backend.convention.default_momentum or 0.9,
               dy=rng.normal(size=(6, 3)) if mode is Mode.EVAL_BACKWARD else None)
    return prepare(placement(backend).inputs(i), declared_precision(backend, dtype, device))


@pytest.mark.parametrize("backend", _stateful_backends())
def test_every_builtin_keeping_running_statistics_returns_them_unchanged_after_an_eval_forward(backend):
    device = first_available_device(backend)
    if device is None:
        pytest.skip(f"{backend.name}: no device runs here")
    dtype = "float32" if "float32" in backend.dtypes else backend.dtypes[0]
    for mode in (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD):
        if mode not in backend.modes:
            continue
        i = _eval_inputs(backend, dtype, device, mode)
        out = backend.run(mode, request(i, dtype, device)).quantities()
        stateless = next((why for pattern, why in STATELESS_IN_EVAL.items() if matches(backend.name, pattern)), None)
        if stateless:
            assert not {"running_mean", "running_var"} & set(out), f"{backend.name}: {stateless}, yet returns them"
        elif mode is Mode.EVAL_FORWARD:  # required of the built-ins that keep state; optional after an eval backward
            assert {"running_mean", "running_var"} <= set(out), f"{backend.name} returns {sorted(out)} after {mode.value}"
        for q, given in (("running_mean", i.running.mean), ("running_var", i.running.var)):
            if q in out:
                np.testing.assert_array_equal(out[q], given, err_msg=f"{backend.name} {mode.value} changed {q}")
        a = assess(backend, mode, i, dtype, device)
        assert all(a.declared[q].verdict is Verdict.CONFORMS for q in ("running_mean", "running_var") if q in a.declared), \
            {q: a.declared[q].detail for q in a.declared}


def test_the_tf_v1_fused_layer_turning_infinite_moving_statistics_into_nan_in_eval_is_the_recorded_finding():
    """A framework finding, recorded (tf-v1-layers-fused-eval-update-turns-inf-into-nan), never a loosened check:
    the declared semantics fail on the running statistics, the recorded behaviour holds, y is unaffected."""
    try:
        backends = {b.name: b for b in load(BUILTIN["tensorflow-layers"][0])}
    except TargetError as e:
        pytest.skip(str(e))
    fused = backends["tf.compat.v1.layers.batch_normalization[fused]"]
    non_fused = backends["tf.compat.v1.layers.batch_normalization[non-fused]"]
    x = np.random.default_rng(0).normal(size=(2, 3, 2, 2))
    running = RunningStats(np.array([np.inf, 0.0, 1.0]), np.array([1.0, np.inf, 2.0]), 2)
    i = Inputs(x=x, axis=1, eps=1e-3, running=running, momentum=0.99)
    a = assess(fused, Mode.EVAL_FORWARD, i, "float32", "cpu")
    assert a.discrepancy is not None and a.discrepancy.id == "tf-v1-layers-fused-eval-update-turns-inf-into-nan"
    assert a.discrepancy_seen and not a.problems(), a.problems()
    assert "changed the running statistics" in a.declared["running_mean"].detail
    np.testing.assert_array_equal(a.observed["running_mean"], [np.nan, 0.0, 1.0])
    b = assess(non_fused, Mode.EVAL_FORWARD, i, "float32", "cpu")
    assert b.discrepancy is None and all(c.verdict is Verdict.CONFORMS for q, c in b.declared.items() if q != "y")
    np.testing.assert_array_equal(b.observed["running_var"], running.var)
