"""Convention records: complete, sourced, and their variants are real differences."""

import dataclasses

import numpy as np
import pytest

from bnconf.spec import CONVENTIONS, MomentumStyle, RunningStats, Variance, convention, forward_train, variants

REQUIRED = [
    "torch.nn.BatchNorm1d",
    "torch.nn.BatchNorm2d",
    "torch.nn.BatchNorm3d",
    "torch.nn.functional.batch_norm",
    "tf.nn.batch_normalization",
    "tf.compat.v1.nn.fused_batch_norm",
    "tf.compat.v1.layers.batch_normalization[fused]",
    "tf.compat.v1.layers.batch_normalization[non-fused]",
    "keras.layers.BatchNormalization",
    "flax.linen.BatchNorm",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_every_required_api_has_a_record_naming_its_source(name):
    c = convention(name)
    assert "::" in c.source and c.source_url.startswith("https://")


def test_records_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        convention("torch.nn.BatchNorm2d").default_eps = 1e-3


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="torch.nn.BatchNorm2d"):
        convention("torch.nn.BatchNorm4d")


def test_the_documented_framework_differences_are_in_the_data():
    torch, keras, flax = (convention(n) for n in ("torch.nn.BatchNorm2d", "keras.layers.BatchNormalization", "flax.linen.BatchNorm"))
    assert (torch.momentum_style, torch.default_momentum) == (MomentumStyle.NEW_WEIGHT, 0.1)
    assert (keras.momentum_style, keras.default_momentum) == (MomentumStyle.OLD_WEIGHT, 0.99)
    assert (torch.running_var, keras.running_var, flax.running_var) == (Variance.UNBIASED, Variance.BIASED, Variance.BIASED)
    assert (torch.default_eps, keras.default_eps, flax.default_eps) == (1e-5, 1e-3, 1e-5)
    assert (torch.channel_axis, keras.channel_axis) == (1, -1)
    assert all(c.normalize_with is Variance.BIASED for c in CONVENTIONS.values())


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_every_variant_changes_what_the_oracle_computes(name):
    """A named mistake that computed the same thing could never be diagnosed."""
    base = convention(name)
    x = np.random.default_rng(0).normal(1.0, 0.01, size=(4, 3))  # n = 4, variance ~ eps
    running = RunningStats(np.full(3, 0.5), np.full(3, 2.0), 1) if base.tracks_running_stats else None
    momentum = 0.3 if base.tracks_running_stats else None

    def outputs(c):
        out = forward_train(x, running=running, convention=c, axis=1, eps=1e-3, momentum=momentum)
        return np.concatenate([out.y.ravel(), *(() if out.running is None else (out.running.mean, out.running.var))])

    reference = outputs(base)
    for mistake, variant in variants(base).items():
        assert not np.allclose(outputs(variant), reference, rtol=1e-6), mistake
