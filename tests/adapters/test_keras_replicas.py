"""Keras 3 and tf_keras synchronized batch norm under MirroredStrategy (adapters/keras_replicas.py), run in
their worker process over logical CPU devices and judged against the synchronized oracle (single-device
batch norm of the concatenated shards, `spec.replicas.expected_step`), every replica's moving statistics
on their own."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install -e \".[tensorflow]\")")

from bnconf.adapters.keras_replicas import BACKENDS  # noqa: E402
from bnconf.adapters.replica_protocol import sharded_request  # noqa: E402
from bnconf.spec import Expected, InputError, RunningStats, Verdict, compare  # noqa: E402
from bnconf.spec.replicas import ShardedInputs, expected_step, split_rows  # noqa: E402
from bnconf.spec.verdict import quantity_format  # noqa: E402

# long, and one shared worker for the whole file (tests/conftest.py: SHARED_WORKERS)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bnconf.adapters.keras_replicas")]

BY_KIND = {b.kind: b for b in BACKENDS}
C = 3


@pytest.fixture(scope="module", params=["keras", "tf_keras"])
def backend(request):
    b = BY_KIND[request.param]
    reason = b.unavailable("cpu")
    if reason:
        pytest.skip(reason)
    yield b


@pytest.fixture(scope="module", autouse=True)
def _stop_the_worker():
    yield
    BACKENDS[0].close()


def _sharded(rows, seed=0, offset=0.0, scale=1.0, dtype=np.float32) -> ShardedInputs:
    rng = np.random.default_rng(seed)
    n = sum(rows)
    x = (offset + scale * rng.standard_normal((n, 2, C))).astype(dtype).astype(np.float64)
    dy = rng.standard_normal((n, 2, C)).astype(dtype).astype(np.float64)
    return ShardedInputs(
        shards=split_rows(x, rows), axis=-1, eps=1e-3,
        gamma=rng.uniform(0.5, 2.0, C).astype(dtype).astype(np.float64),
        beta=rng.standard_normal(C).astype(dtype).astype(np.float64),
        running=RunningStats(np.array([0.5, -0.25, 0.0]), np.array([2.0, 0.5, 1.0]), 1),
        momentum=0.9, dys=split_rows(dy, rows),
    )


def _row(e: Expected, r: int) -> Expected:
    """Replica r's row of a stacked (W, C) Expected."""
    pick = lambda a: None if a is None else np.asarray(a)[r]  # noqa: E731
    return replace(e, value=e.value[r], bound=e.bound[r], bound_one_pass=e.bound_one_pass[r], ill=e.ill[r],
                   ill_one_pass=e.ill_one_pass[r], channel_axis=0, nonfinite_ok=pick(e.nonfinite_ok))


def _judge(backend, s: ShardedInputs, dtype="float32"):
    """Each quantity's Comparison with the synchronized oracle (`spec.replicas.expected_step`: single-device
    batch norm of the concatenation with the combine step's error); running statistics per replica copy."""
    out = backend.step(sharded_request(s, dtype))
    p = backend.precision(dtype, "cpu")
    exp = expected_step(s, backend.convention, backend.replica, p, backward=True)
    observed = {"y": np.concatenate(out.y), "dx": np.concatenate(out.dx), "dgamma": out.dgamma, "dbeta": out.dbeta}
    results = {q: compare(q, v, exp[q], quantity_format(q, p)) for q, v in observed.items()}
    for q in ("running_mean", "running_var"):
        for r, v in enumerate(getattr(out, q)):
            results[f"{q}[{r}]"] = compare(q, v, _row(exp[q], r), quantity_format(q, p))
    return out, results


def _failing(results):
    return {q: c.detail or c.verdict.value for q, c in results.items() if c.verdict is not Verdict.CONFORMS}


def test_importing_the_adapter_imports_no_framework():
    code = ("import sys, bnconf.adapters.keras_replicas; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'tf_keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("rows", [(8,), (4, 4), (2, 2, 2, 2)], ids=["W1", "W2", "W4"])
def test_equal_shards_conform(backend, rows):
    out, results = _judge(backend, _sharded(rows))
    assert not _failing(results)
    assert [y.shape[0] for y in out.y] == list(rows) and [d.shape[0] for d in out.dx] == list(rows)


def test_unequal_shards_are_weighted_by_their_counts(backend):
    """3 + 1 + 4 rows: an equal-weight combine would be off by far more than the bound."""
    _, results = _judge(backend, _sharded((3, 1, 4), seed=1, offset=2.0))
    assert not _failing(results)


def test_same_signature_reuses_the_traced_step(backend):
    backend.step(sharded_request(_sharded((2, 3), seed=2), "float32"))
    traces = backend.traces
    backend.step(sharded_request(_sharded((5, 1), seed=3), "float32"))  # new batch lengths, same signature
    r = sharded_request(_sharded((4, 4), seed=4), "float32")
    backend.step(replace(r, momentum=0.5, eps=1e-5))  # new momentum and eps
    assert backend.traces == traces


def test_a_momentum_and_eps_given_as_arguments_round_as_python_floats_do(backend):
    """momentum 0.7 and eps 0.1 reach the traced step as arguments: the moving statistics must be what the
    layer computes with the Python floats (checked against the oracle's tight float32 bound)."""
    s = _sharded((2, 3), seed=5)
    s = replace(s, momentum=0.7, eps=0.1)
    _, results = _judge(backend, s)
    assert not _failing(results)


def test_keras3_empty_shard_gets_the_global_statistics():
    backend = BY_KIND["keras"]
    if backend.unavailable("cpu"):
        pytest.skip(backend.unavailable("cpu"))
    out, results = _judge(backend, _sharded((0, 4, 2), seed=6))
    assert not _failing(results)
    assert out.y[0].shape == (0, 2, C) and out.dx[0].shape == (0, 2, C)


def test_tf_keras_empty_replica_keeps_its_old_moving_statistics():
    """tf_keras skips the moving-average update on a replica whose local batch is empty
    (BatchNormalizationBase._moments zeroes mean/variance where tf.shape(inputs)[0] == 0 and
    _assign_moving_average keeps the old value there, under a strategy with partial-batch handling): that
    replica's copy stays at the old value, the others hold the global update. Every other quantity conforms."""
    backend = BY_KIND["tf_keras"]
    if backend.unavailable("cpu"):
        pytest.skip(backend.unavailable("cpu"))
    s = _sharded((0, 4, 2), seed=6)
    out, results = _judge(backend, s)
    assert set(_failing(results)) == {"running_mean[0]", "running_var[0]"}
    np.testing.assert_array_equal(out.running_mean[0], np.float32(s.running.mean))
    np.testing.assert_array_equal(out.running_var[0], np.float32(s.running.var))


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_other_dtypes_conform(backend, dtype):
    np_dtype = np.float16 if dtype == "float16" else np.float64
    s = _sharded((3, 2), seed=8, dtype=np_dtype)
    _, results = _judge(backend, s, dtype=dtype)
    failing = _failing(results)
    if backend.kind == "tf_keras" and dtype == "float64":
        # as the single-device non-fused layer (known discrepancy tf-v1-layers-float64-float32-decay):
        # decay = tf.convert_to_tensor(1.0 - momentum) is float32, cast to the float64 variable
        assert set(failing) == {f"{q}[{r}]" for q in ("running_mean", "running_var") for r in range(2)}
        float32_decay = 1.0 - float(np.float32(1.0 - s.momentum))
        _, results = _judge(backend, replace(s, momentum=float32_decay), dtype=dtype)
        failing = _failing(results)
    assert not failing


def test_forward_only_returns_no_gradients(backend):
    s = _sharded((2, 2), seed=9)
    out = backend.step(sharded_request(replace(s, dys=None), "float32"))
    assert out.dx is None and out.dgamma is None and len(out.y) == 2 and len(out.running_var) == 2


def test_refuses_five_replicas(backend):
    with pytest.raises(InputError, match="5 replicas"):
        backend.step(sharded_request(_sharded((1, 1, 1, 1, 1)), "float32"))
