"""Convention inference: the oracle's own backends are recognised, deliberately odd ones are caught."""

from dataclasses import replace

import numpy as np
import pytest

from bnconf.adapters.protocol import Outputs
from bnconf.conformance import inference_probes as probes
from bnconf.conformance.ideal import IdealBackend
from bnconf.conformance.inference import NOT_TRACKED, infer
from bnconf.spec import CONVENTIONS, EpsPlacement, Mode, MomentumStyle, variants

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


def test_half_accumulation_is_detected():
    f = infer(HalfAccumulating(TORCH), dtype="float16").findings["accumulation[float16]"]
    assert f.value == "half accumulation", str(f)
    assert f.candidates["float32 (or wider) accumulation"] > 1.0
    assert infer(IdealBackend(TORCH), dtype="float64").findings.keys().isdisjoint({"accumulation[float16]"})


def test_torch_backends_are_inferred_as_declared():
    pytest.importorskip("torch", reason="torch is not installed")
    from bnconf.adapters import torch_batchnorm

    for backend in torch_batchnorm.BACKENDS:
        inference = infer(backend)
        assert all(inference.matches(backend.convention).values()), str(inference)
        for half in ("float16", "bfloat16"):
            if half in backend.dtypes:
                assert inference[f"accumulation[{half}]"] == "float32 (or wider) accumulation"
