"""keras.layers.BatchNormalization adapters: what the generated conformance cells do not pin down."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("keras", reason="Keras 3 is not installed (pip install -e \".[keras]\")")

from bnconf.adapters.keras_batchnorm import BACKENDS  # noqa: E402
from bnconf.adapters.protocol import Request  # noqa: E402
from bnconf.spec import Mode  # noqa: E402

BY_NAME = {b.name: b for b in BACKENDS}


def _backend(name: str):
    keras_backend = name.split("[")[1].split(",")[0].rstrip("]")
    if importlib.util.find_spec(keras_backend) is None:
        pytest.skip(f"{keras_backend} is not installed")
    return BY_NAME[name]


def test_importing_the_adapter_imports_no_framework():
    code = ("import sys, bnconf.adapters.keras_batchnorm; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("keras_backend", ["jax", "torch"])
def test_mixed_float16_keeps_the_moving_statistics_in_float32(keras_backend):
    backend = _backend(f"keras.layers.BatchNormalization[{keras_backend}, mixed_float16]")
    assert backend.precision("float16", "cpu").stats == "float32"
    kept = float(np.float32(0.1))  # not a float16 number: a float16 variable would round it
    r = Request(x=np.array([[1.0], [2.0]]), axis=-1, eps=1e-3, dtype="float16", momentum=1.0,
                running_mean=np.array([kept]), running_var=np.array([kept]))
    out = backend.run(Mode.TRAIN_FORWARD, r)
    assert out.running_mean[0] == kept and out.running_var[0] == kept
    assert float(np.float16(kept)) != kept


def test_the_float64_policy_computes_in_float32_on_jax():
    """Recorded as keras-jax-float64-policy-computes-in-float32: result_type(float64, float32) is float32."""
    backend = _backend("keras.layers.BatchNormalization[jax]")
    r = Request(x=np.array([[0.1, 0.2], [0.3, 0.7]]), axis=-1, eps=1e-3, dtype="float64", momentum=0.9,
                running_mean=np.zeros(2), running_var=np.ones(2))
    y = backend.run(Mode.TRAIN_FORWARD, r).y
    exact = -0.1 / np.sqrt(0.01 + 1e-3)
    assert y[0, 0] != exact and abs(y[0, 0] - exact) < 1e-6


def test_the_torch_backends_one_pass_variance_gives_nan_on_a_large_offset():
    """Recorded as keras-torch-one-pass-variance-nan: mean(x**2) - mean(x)**2 < -eps, unclamped."""
    backend = _backend("keras.layers.BatchNormalization[torch]")
    r = Request(x=np.array([[10000.1259765625], [9999.8681640625]]), axis=-1, eps=1e-5, dtype="float32",
                momentum=0.9, running_mean=np.zeros(1), running_var=np.ones(1))
    assert np.isnan(backend.run(Mode.TRAIN_FORWARD, r).y).all()
