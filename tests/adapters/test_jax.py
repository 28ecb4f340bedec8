"""JAX adapter behaviour the generated conformance cells do not show: x64 isolation, the jit cache,
Haiku's zero-debiasing, Flax's fast variance, and Equinox's debiasing from an initial variance of 1."""

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install -e \".[jax]\")")
pytest.importorskip("flax", reason="Flax is not installed (pip install -e \".[jax]\")")
pytest.importorskip("haiku", reason="dm-haiku is not installed (pip install -e \".[jax]\")")
pytest.importorskip("equinox", reason="Equinox is not installed (pip install -e \".[jax]\")")

import jax.numpy as jnp  # noqa: E402

from bnconf.adapters import jax_common  # noqa: E402
from bnconf.adapters.jax_equinox import EquinoxBatchNorm  # noqa: E402
from bnconf.adapters.jax_flax import LinenBatchNorm  # noqa: E402
from bnconf.adapters.jax_haiku import HaikuBatchNorm  # noqa: E402
from bnconf.adapters.protocol import Request  # noqa: E402
from bnconf.spec import Mode  # noqa: E402


def _request(x, dtype="float32", **kw) -> Request:
    c = x.shape[-1]
    base = dict(x=x, axis=-1, eps=1e-5, dtype=dtype, momentum=0.9, running_mean=np.zeros(c), running_var=np.ones(c))
    return Request(**{**base, **kw})


def test_a_float64_run_leaves_jax_in_32_bit_mode():
    before = jax.config.jax_enable_x64
    x = np.random.default_rng(0).standard_normal((5, 3))
    out = LinenBatchNorm().run(Mode.TRAIN_FORWARD, _request(x, "float64"))
    # float64 really ran: the result differs from float32 rounding
    assert np.allclose(out.y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-12, atol=1e-12)
    assert jax.config.jax_enable_x64 == before
    assert jnp.asarray(np.ones(2)).dtype == (jnp.float64 if before else jnp.float32)


def test_a_float64_run_keeps_a_global_x64_setting():
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        LinenBatchNorm().run(Mode.TRAIN_FORWARD, _request(np.ones((2, 1)) * [[1.0], [2.0]], "float64"))
        assert jax.config.jax_enable_x64 is True
    finally:
        jax.config.update("jax_enable_x64", before)


def test_the_jitted_program_compiles_once_per_signature():
    backend = HaikuBatchNorm()
    x = np.random.default_rng(1).standard_normal((6, 2))
    jax_common.compiled.cache_clear()
    start = jax_common.TRACES[backend.name]
    for eps, momentum in [(1e-5, 0.9), (1e-3, 0.5), (0.1, 0.99)]:  # traced scalars: no new compilation
        backend.run(Mode.TRAIN_FORWARD, _request(x, eps=eps, momentum=momentum))
    assert jax_common.TRACES[backend.name] - start == 1
    backend.run(Mode.TRAIN_FORWARD, _request(x[:4]))  # another shape: one more
    backend.run(Mode.EVAL_FORWARD, _request(x))  # another mode: one more
    assert jax_common.TRACES[backend.name] - start == 3


def test_haiku_zero_debiased_average_after_one_step_is_the_batch_statistics():
    x = np.random.default_rng(2).standard_normal((8, 3)) * 3 + 1
    r = _request(x, momentum=0.99, running_mean=np.full(3, 50.0), running_var=np.full(3, 7.0), batches_seen=0)
    out = HaikuBatchNorm().run(Mode.TRAIN_FORWARD, r)
    np.testing.assert_allclose(out.running_mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(out.running_var, x.var(0), rtol=1e-4)
    assert out.batches_seen == 1


def test_haiku_state_after_t_steps_continues_the_debiased_average():
    x = np.random.default_rng(3).standard_normal((8, 2))
    r = _request(x, momentum=0.9, running_mean=np.array([1.0, -2.0]), running_var=np.array([2.0, 0.5]), batches_seen=3)
    out = HaikuBatchNorm().run(Mode.TRAIN_FORWARD, r)
    w = 0.1 / (1 - 0.9**4)  # the weight of batch 4 in a zero-debiased average
    np.testing.assert_allclose(out.running_mean, (1 - w) * r.running_mean + w * x.mean(0), rtol=1e-5)


def test_flax_fast_variance_loses_accuracy_where_the_stable_one_does_not():
    rng = np.random.default_rng(4)
    x = (1e4 + rng.standard_normal((256, 1))).astype(np.float32).astype(np.float64)
    exact = x.var(0)
    error = {}
    for backend in (LinenBatchNorm(fast_variance=True), LinenBatchNorm(fast_variance=False)):
        out = backend.run(Mode.TRAIN_FORWARD, _request(x, momentum=0.0))  # running variance = batch variance
        error[backend.fast_variance] = abs(out.running_var[0] - exact[0]) / exact[0]
    assert error[False] < 1e-4
    assert error[True] > 1e-2  # E[x^2] - E[x]^2 in float32 at |mean| / std = 1e4


def test_equinox_debiases_the_variance_from_its_initial_one():
    """equinox/nn/_batch_norm.py v0.13.8: hidden starts at (0, 1) and inference divides by 1 - m**t, so one
    step from the layer's own initial state gives var + m / (1 - m), not the batch variance."""
    x = np.random.default_rng(5).standard_normal((16, 2, 3))
    m = 0.9
    out = EquinoxBatchNorm().run(Mode.TRAIN_FORWARD, Request(
        x=x, axis=1, eps=1e-5, dtype="float64", momentum=m, running_mean=np.zeros(2), running_var=np.ones(2)))
    batch_var = x.transpose(1, 0, 2).reshape(2, -1).var(1)
    np.testing.assert_allclose(out.running_var, batch_var + m / (1 - m), rtol=1e-12)
    np.testing.assert_allclose(out.running_mean, x.mean((0, 2)), rtol=1e-12, atol=1e-15)


def test_gpu_is_unavailable_with_a_reason_on_a_cpu_machine():
    try:
        jax.devices("gpu")
    except RuntimeError:
        assert "GPU" in LinenBatchNorm().unavailable("gpu")
    else:
        assert LinenBatchNorm().unavailable("gpu") is None


def test_bad_requests_name_the_problem():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="gamma and beta"):
        LinenBatchNorm().run(Mode.TRAIN_FORWARD, _request(x, gamma=np.ones(3)))
    with pytest.raises(ValueError, match="channel axis"):
        EquinoxBatchNorm().run(Mode.TRAIN_FORWARD, _request(np.ones((4, 3, 2))))
