"""Adapter-specific behaviour of the tf.nn and fused_batch_norm adapters (the battery covers the numbers)."""

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("bnconf.adapters.tensorflow_common", reason="tensorflow is not installed")

from bnconf.adapters import tensorflow_nn  # noqa: E402
from bnconf.adapters.protocol import Request  # noqa: E402
from bnconf.spec import Mode  # noqa: E402

RNG = np.random.default_rng(0)


def _request(shape, axis=-1, **kw):
    c = shape[axis]
    return Request(x=RNG.standard_normal(shape), axis=axis, eps=1e-3, dtype=kw.pop("dtype", "float32"),
                   gamma=np.ones(c), beta=np.zeros(c), dy=RNG.standard_normal(shape), **kw)


def test_the_tf_function_adapter_traces_once_per_signature_not_per_example():
    backend = tensorflow_nn.NnBatchNormalization(compiled=True)
    for eps in (1e-3, 1e-5, 0.1):  # new values, eps included (an argument, not part of the signature)
        backend.run(Mode.TRAIN_FORWARD, replace(_request((4, 3, 2)), eps=eps))
    assert backend.traces == 1
    backend.run(Mode.TRAIN_BACKWARD, _request((4, 3, 2)))
    backend.run(Mode.TRAIN_FORWARD, _request((4, 3, 2), axis=1))
    assert backend.traces == 3  # a backward and another channel axis are new signatures
    backend.run(Mode.TRAIN_FORWARD, _request((4, 3, 2)))
    assert backend.traces == 3


def test_eager_and_tf_function_agree():
    r = _request((5, 4, 3), axis=1)
    eager = tensorflow_nn.NnBatchNormalization(compiled=False).run(Mode.TRAIN_BACKWARD, r)
    graph = tensorflow_nn.NnBatchNormalization(compiled=True).run(Mode.TRAIN_BACKWARD, r)
    np.testing.assert_allclose(eager.dx, graph.dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels, shape, axis", [("last", (2, 3, 4, 5), -1), ("first", (2, 5, 3, 4), 1),
                                                   ("last", (2, 3, 2, 2, 5), -1), ("first", (2, 5, 3, 2, 2), 1)])
def test_fused_returns_the_bessel_corrected_variance_and_saves_the_biased_one(channels, shape, axis):
    r = _request(shape, axis, momentum=1.0, running_mean=np.zeros(5), running_var=np.ones(5))
    out = tensorflow_nn.FusedBatchNorm(channels).run(Mode.TRAIN_FORWARD, r)
    reduce = tuple(a for a in range(len(shape)) if a != axis % len(shape))
    x = r.x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(out.running_var, x.var(axis=reduce, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(out.saved_var, x.var(axis=reduce), rtol=1e-5)
    np.testing.assert_allclose(out.saved_mean, x.mean(axis=reduce), rtol=1e-5, atol=1e-6)


def test_fused_one_value_per_channel_gives_running_variance_zero():
    r = _request((1, 1, 1, 3), momentum=1.0, running_mean=np.zeros(3), running_var=np.ones(3))
    out = tensorflow_nn.FusedBatchNorm("last").run(Mode.TRAIN_FORWARD, r)
    np.testing.assert_array_equal(out.running_var, 0.0)  # n - 1 floored at 1: 0 / 1, not 0 / 0


@pytest.mark.parametrize("bad, message", [
    (dict(x=np.zeros((2, 3))), "rank 2"),
    (dict(axis=1), r"channel axis 1 is not supported .*\(axes \(-1,\)\)"),
    (dict(dtype="float64"), "float64"),
])
def test_fused_rejects_bad_input_with_a_clear_error(bad, message):
    r = _request((2, 3, 4, 5))
    r = replace(r, gamma=None, beta=None, **bad)
    with pytest.raises(ValueError, match=message):
        tensorflow_nn.FusedBatchNorm("last").run(Mode.TRAIN_FORWARD, r)


def test_the_nn_adapter_has_no_eval_mode():
    with pytest.raises(ValueError, match="no running statistics"):
        tensorflow_nn.NnBatchNormalization(compiled=False).run(Mode.EVAL_FORWARD, _request((4, 3)))


def test_gpu_is_declared_and_says_why_it_is_unavailable():
    from bnconf.adapters.tensorflow_common import tf
    backend = tensorflow_nn.FusedBatchNorm("first")
    assert "gpu" in backend.devices
    if tf.config.list_physical_devices("GPU"):
        assert backend.unavailable("gpu") is None
    else:
        assert "no GPU" in backend.unavailable("gpu")
