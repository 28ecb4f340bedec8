"""Convention inference: the oracle's own backends are recognised, deliberately odd ones are caught; every selected
backend (the built-ins and installed entry points, or --bnconf-backend) is inferred as declared or as recorded
(`test_inference`, the installed suite's `bnconf.testing.test_inference`, collected here)."""

import re
from dataclasses import replace

import numpy as np
import pytest

from bnconf.adapters.protocol import Outputs
from bnconf.conformance import inference_probes as probes
from bnconf.conformance.ideal import IdealBackend
from bnconf.conformance.discrepancies import KnownDiscrepancy
from bnconf.conformance.inference import HALF_SUMS, NOT_TRACKED, infer
from bnconf.spec import CONVENTIONS, EpsPlacement, Mode, MomentumStyle, variants
from bnconf.testing.test_inference import pytest_generate_tests, test_inference  # noqa: F401

TORCH = CONVENTIONS["torch.nn.BatchNorm2d"]
KERAS = CONVENTIONS["keras.layers.BatchNormalization"]


class Declaring(IdealBackend):
    """Behaves as `actual`, declares `declared`: what a backend with a wrong record looks like."""

    def __init__(self, actual, declared):
        super().__init__(actual)
        self.actual, self.convention, self.name = actual, declared, f"odd[{actual.name}]"

    def run(self, mode, r):
        self.convention, declared = self.actual, self.convention
        try:
            return super().run(mode, r)
        finally:
            self.convention = declared


def mismatches(backend) -> set[str]:
    return {k for k, ok in infer(backend).matches(backend.convention).items() if not ok}


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_ideal_backend_is_inferred_as_declared(name):
    conv = CONVENTIONS[name]
    inference = infer(IdealBackend(conv))
    assert all(inference.matches(conv).values()), str(inference)
    if conv.tracks_running_stats:
        assert inference["momentum_style"] is conv.momentum_style
        assert inference["running_var"] is conv.running_var
        assert inference["zero_debias"] is conv.zero_debias
        assert inference["cumulative_average"] is conv.cumulative_average
    else:
        assert inference["momentum_style"] == NOT_TRACKED
    assert inference["eps_placement"] is conv.eps_placement
    assert inference["eps_min"] == conv.eps_min


def test_findings_carry_evidence_and_every_candidate():
    f = infer(IdealBackend(TORCH)).findings["momentum_style"]
    assert set(f.candidates) == {s.value for s in MomentumStyle}
    assert f.candidates["new_weight"] < 1e-12 < 0.5 < f.candidates["old_weight"]
    assert "w = (new - old) / (batch - old)" in f.evidence and "\n" not in f.evidence


def test_keras_momentum_style_under_a_torch_record_is_caught():
    odd = Declaring(replace(TORCH, momentum_style=MomentumStyle.OLD_WEIGHT), TORCH)
    inference = infer(odd)
    assert inference["momentum_style"] is MomentumStyle.OLD_WEIGHT
    assert not inference.matches(TORCH)["momentum_style"]
    assert all(inference.matches(replace(TORCH, momentum_style=MomentumStyle.OLD_WEIGHT)).values())


EXPECTED_MISMATCH = {
    "eps outside the square root": "eps_placement",
    "running variance biased instead of unbiased": "running_var",
    "running variance unbiased instead of biased": "running_var",
    "momentum applied the wrong way round": "momentum_style",
    "zero-debiased moving average": "zero_debias",
    "moving average not zero-debiased": "zero_debias",
}


@pytest.mark.parametrize("declared", [TORCH, KERAS, CONVENTIONS["haiku.BatchNorm"], CONVENTIONS["tf.compat.v1.nn.fused_batch_norm"]],
                         ids=lambda c: c.name)
def test_named_variants_are_caught(declared):
    for mistake, variant in variants(declared).items():
        if mistake not in EXPECTED_MISMATCH:
            continue  # normalize_with is not inferred
        assert EXPECTED_MISMATCH[mistake] in mismatches(Declaring(variant, declared)), mistake


def test_eps_clamp_is_estimated():
    inference = infer(Declaring(replace(KERAS, eps_min=1e-3), KERAS))
    assert inference["eps_min"] == pytest.approx(1e-3, rel=1e-9)
    assert inference.matches(KERAS) == {**inference.matches(KERAS), "eps_min": False}
    assert inference.matches(replace(KERAS, eps_min=1e-3))["eps_min"]


def test_eps_outside_the_root_fitted_with_its_value():
    f = infer(IdealBackend(replace(TORCH, eps_placement=EpsPlacement.OUTSIDE_SQRT))).findings["eps_placement"]
    assert f.value is EpsPlacement.OUTSIDE_SQRT and f.candidates["outside_sqrt"] < 1e-12 < 0.01 < f.candidates["inside_sqrt"]


def test_bessel_floor_one_value_per_channel():
    fused = CONVENTIONS["tf.compat.v1.nn.fused_batch_norm"]
    assert infer(IdealBackend(fused))["bessel_divisor_min"] == 1
    assert infer(IdealBackend(TORCH))["bessel_divisor_min"] == 0
    assert "bessel_divisor_min" in mismatches(Declaring(replace(fused, bessel_divisor_min=0), fused))


class RaisesOnOneValue(IdealBackend):
    """Raises `error` on a training step with one value per channel and running statistics."""

    def __init__(self, convention, error: Exception):
        super().__init__(convention)
        self.error = error

    def run(self, mode, r):
        if mode is Mode.TRAIN_FORWARD and r.running_mean is not None and r.x.size == r.x.shape[r.axis]:
            raise self.error
        return super().run(mode, r)


@pytest.mark.parametrize("error, rejected", [(ZeroDivisionError("division by zero"), True),
                                             (ValueError("more than one value per channel"), True),
                                             (TypeError("unsupported operand"), False)],
                         ids=["ZeroDivisionError", "ValueError", "TypeError"])
def test_inference_and_edge_cases_share_one_definition_of_refusal(error, rejected):
    """The same exception is a refusal in both or a crash in both (conformance/refusal.py)."""
    from bnconf.conformance.edge import run_edge_cases

    backend = RaisesOnOneValue(TORCH, error)
    finding = infer(backend).findings["bessel_divisor_min"]
    edge = next(o for o in run_edge_cases(backend) if o.case == "single-value-running")
    assert (finding.value == "rejected") is rejected and edge.agrees is rejected
    assert infer(backend).matches(TORCH)["bessel_divisor_min"] is rejected
    if not rejected:
        assert finding.value is None and finding.evidence.endswith("(a crash, not a refusal)")


def test_cumulative_average_refused_and_absent():
    functional = CONVENTIONS["torch.nn.functional.batch_norm"]
    f = infer(IdealBackend(functional)).findings["cumulative_average"]
    assert f.value is False and f.evidence.startswith("not supported")
    assert "cumulative_average" in mismatches(Declaring(functional, TORCH))


class IgnoresAxis(IdealBackend):
    """Declares channels on axis 1, always normalizes over the last axis."""

    def run(self, mode, r):
        return super().run(mode, replace(r, axis=-1))


def test_channel_axis_actually_reduced():
    inference = infer(IgnoresAxis(TORCH))
    assert inference["channel_axis"] == {1: 3}
    assert not inference.matches(TORCH)["channel_axis"]


class EvalWithBatchStats(IdealBackend):
    def run(self, mode, r):
        if mode is Mode.EVAL_FORWARD:
            return super().run(Mode.TRAIN_FORWARD, replace(r, running_mean=None, running_var=None))
        return super().run(mode, r)


def test_eval_with_batch_statistics_is_caught():
    inference = infer(EvalWithBatchStats(KERAS))
    assert inference["eval_uses_running_stats"] is False
    assert not inference.matches(KERAS)["eval_uses_running_stats"]


class HalfAccumulating(IdealBackend):
    """Train forward whose mean and variance are summed element by element in the input's half format."""

    dtypes = ("float32", "float16")

    def run(self, mode, r):
        if r.dtype != "float16":
            return super().run(mode, r)
        rows = probes.per_channel(r.x, r.axis).astype(np.float16)
        mean = np.add.accumulate(rows, axis=0)[-1].astype(np.float64) / rows.shape[0]
        d = (rows - mean.astype(np.float16)).astype(np.float16)
        var = np.add.accumulate(d * d, axis=0)[-1].astype(np.float64) / rows.shape[0]
        y = (probes.per_channel(r.x, r.axis) - mean) / np.sqrt(var + r.eps)
        return Outputs(y=np.moveaxis(y.reshape(np.moveaxis(r.x, r.axis, -1).shape), -1, r.axis))


def test_half_accumulation_is_detected_and_held_against_the_declared_accumulator():
    backend = HalfAccumulating(TORCH)
    inference = infer(backend, dtype="float16")
    f = inference.findings["accumulation[float16]"]
    assert f.value == HALF_SUMS and "as sequential half sums predict" in f.evidence, str(f)
    assert f.candidates["float32 (or wider) accumulation"] > 1.0
    # it declares the default precision (float32 sums for float16 inputs): an unexplained difference
    assert inference.verdicts(TORCH, registry=())["accumulation[float16]"] == "DIFFERS"
    assert infer(IdealBackend(TORCH), dtype="float64").findings.keys().isdisjoint({"accumulation[float16]"})


def test_a_difference_is_explained_only_by_an_entry_that_covers_one_of_its_probes():
    odd = Declaring(replace(TORCH, momentum_style=MomentumStyle.OLD_WEIGHT), TORCH)
    inference = infer(odd)
    entry = lambda **kw: KnownDiscrepancy(id="odd-momentum", backends="odd[*]", quantities=("running_mean",),  # noqa: E731
                                          explanation="", evidence="", **kw)
    assert inference.verdicts(TORCH, registry=())["momentum_style"] == "DIFFERS"
    assert inference.verdicts(TORCH, registry=(entry(),))["momentum_style"] == "differs as recorded: odd-momentum"
    # an entry for eval only, or for another dtype, covers none of the momentum probes
    assert inference.verdicts(TORCH, registry=(entry(modes=(Mode.EVAL_FORWARD,)),))["momentum_style"] == "DIFFERS"
    assert inference.verdicts(TORCH, registry=(entry(dtypes=("float16",)),))["momentum_style"] == "DIFFERS"
    assert inference.verdicts(TORCH, registry=(entry(),))["eps_placement"] == "agrees"
    # an entry about another quantity explains nothing here
    y_only = replace(entry(), quantities=("y",))
    assert inference.verdicts(TORCH, registry=(y_only,))["momentum_style"] == "DIFFERS"


class TrainEpsHardCoded(IdealBackend):
    """Eval uses the eps asked for, training a hard-coded 1e-5 (the TF tutorial layer's mistake)."""

    def run(self, mode, r):
        return super().run(mode, replace(r, eps=1e-5) if mode in (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD) else r)


def test_an_eps_used_only_in_training_is_caught():
    inference = infer(TrainEpsHardCoded(TORCH))
    verdicts = inference.verdicts(TORCH, registry=())
    assert verdicts["eps_placement"] == "agrees" and verdicts["eps_min"] == "agrees"
    assert verdicts["eps_in_training"] == "DIFFERS"
    assert inference["eps_in_training"] == pytest.approx(1e-5, rel=1e-6)


class MomentumSkewed(IdealBackend):
    """Weights the new batch by momentum * (1 + 1e-3): no momentum hypothesis is within tolerance."""

    def run(self, mode, r):
        if mode is Mode.TRAIN_FORWARD and r.momentum is not None:
            r = replace(r, momentum=r.momentum * (1 + 1e-3))
        return super().run(mode, r)


def test_the_best_hypothesis_and_its_residual_are_shown_when_none_is_accepted():
    f = infer(MomentumSkewed(TORCH)).findings["momentum_style"]
    assert f.value is None
    assert re.search(r"; no hypothesis within \S+; best: new_weight \(residual 0\.001\)$", f.evidence), f.evidence


def test_inference_probes_in_the_run_s_dtype_with_that_format_s_tolerance():
    from bnconf.conformance.mutants import REFERENCE
    from bnconf.conformance.inference import report_rows

    seen = []
    rows = report_rows(REFERENCE, before=lambda mode, r: seen.append(r.dtype), dtypes=["float32"])
    assert set(seen) == {"float32"} and all(r["verdict"] == "agrees" and r["dtype"] == "float32" for r in rows), rows
    assert infer(REFERENCE, dtype="float32").dtype == "float32"
    assert report_rows(REFERENCE, dtypes=None)[0]["dtype"] == "float64"  # no selection: float64 where declared
