"""The JAX replica backends run distributed: Flax linen/nnx, Haiku and Equinox batch norm under shard_map over
host CPU devices in one worker process.

Equal shards conform to synchronized batch norm (single-device batch norm of the concatenation, spec.expected)
at W = 1, 2, 4; Flax with unequal shards computes the equal-weight statistics its `_compute_stats` pmean gives
(a known discrepancy, asserted as such), and an empty (all-masked) shard makes every replica NaN; Haiku and
Equinox refuse unequal and empty splits with the record's reason; a hung or dead worker ends the call with
ReplicaTimeout / ReplicaCrash and a later step starts a fresh worker.
"""

import inspect
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax", reason="JAX is not installed (pip install -e \".[jax]\")")
pytest.importorskip("flax", reason="Flax is not installed (pip install -e \".[jax]\")")
pytest.importorskip("haiku", reason="dm-haiku is not installed (pip install -e \".[jax]\")")
pytest.importorskip("equinox", reason="Equinox is not installed (pip install -e \".[jax]\")")

from bnconf.adapters import jax_replicas  # noqa: E402
from bnconf.adapters.replica_group import ReplicaGroup  # noqa: E402
from bnconf.adapters.replica_protocol import ReplicaCrash, ReplicaTimeout, sharded_request  # noqa: E402
from bnconf.spec import InputError, Mode, RunningStats, Verdict, compare, expected  # noqa: E402
from bnconf.spec.replicas import Combine, ShardedInputs, combined_stats, partial_stats, split_rows  # noqa: E402
from bnconf.spec.verdict import quantity_format  # noqa: E402

# long, and one shared worker for the whole file (tests/conftest.py: SHARED_WORKERS)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group(jax_replicas.__name__)]

BY_LIBRARY = {b.library: b for b in jax_replicas.BACKENDS}
FLAX = [BY_LIBRARY["linen"], BY_LIBRARY["nnx"]]
UNMASKED = [BY_LIBRARY["haiku"], BY_LIBRARY["equinox"]]


@pytest.fixture(scope="module", autouse=True)
def _stop_the_worker():
    yield
    jax_replicas.close()


def _grid(rng, shape, scale=1.0, offset=0.0):
    """Values on a grid of 1/64: exact in float32 and float64."""
    return np.round((offset + scale * rng.standard_normal(shape)) * 64) / 64


def _inputs(rows, *, channels=3, spatial=(2,), seed=0, momentum=0.9, offset=2.0, scale=3.0) -> ShardedInputs:
    """Channels first (axis 1, which every JAX backend takes), tracked running statistics after 3 batches."""
    rng = np.random.default_rng(seed)
    x = _grid(rng, (sum(rows), channels, *spatial), scale, offset)
    dy = _grid(rng, x.shape)
    return ShardedInputs(
        shards=split_rows(x, rows), axis=1, eps=1e-5, gamma=_grid(rng, channels, 0.2, 1.0),
        beta=_grid(rng, channels, 0.2),
        running=RunningStats(_grid(rng, channels, 0.5), 1 + _grid(rng, channels, 0.1) ** 2, 3),
        momentum=momentum, dys=split_rows(dy, rows),
    )


def _verdicts(backend, sharded: ShardedInputs, out, dtype: str) -> dict[str, Verdict]:
    """Each quantity against synchronized batch norm: spec.expected on the concatenation, y and dx concatenated
    over replicas, every replica's running statistics against the global update."""
    precision = backend.precision(dtype, "cpu")
    whole = sharded.concatenated()
    exp = {**expected(Mode.TRAIN_FORWARD, whole, backend.convention, precision),
           **expected(Mode.TRAIN_BACKWARD, whole, backend.convention, precision)}
    observed = {"y": np.concatenate(out.y), "dx": np.concatenate(out.dx), "dgamma": out.dgamma, "dbeta": out.dbeta}
    for r in range(sharded.world_size):
        observed[f"running_mean[{r}]"] = out.running_mean[r]
        observed[f"running_var[{r}]"] = out.running_var[r]
    verdicts = {}
    for name, value in observed.items():
        q = name.split("[")[0]
        verdicts[name] = compare(q, value, exp[q], quantity_format(q, precision)).verdict
    return verdicts


@pytest.mark.parametrize("backend", jax_replicas.BACKENDS, ids=lambda b: b.library)
def test_equal_shards_conform_to_synchronized_batch_norm(backend):
    for world in (1, 2, 4):
        sharded = _inputs((4,) * world, seed=world)
        out = backend.step(sharded_request(sharded, "float32"))
        assert len(out.y) == len(out.dx) == len(out.running_mean) == world
        assert all(y.shape == s.shape for y, s in zip(out.y, sharded.shards))
        verdicts = _verdicts(backend, sharded, out, "float32")
        assert all(v is Verdict.CONFORMS for v in verdicts.values()), (world, verdicts)
        # the replicated gamma's gradient is the same sum on every replica (no replica kept its own)
        assert backend.last_step["dgamma_spread"] == 0.0


@pytest.mark.parametrize("backend", jax_replicas.BACKENDS, ids=lambda b: b.library)
def test_float64_one_value_per_replica_and_a_repeated_shape(backend):
    sharded = _inputs((1, 1, 1), seed=7, spatial=())
    out = backend.step(sharded_request(sharded, "float64"))
    assert all(v is Verdict.CONFORMS for v in _verdicts(backend, sharded, out, "float64").values())
    assert backend.last_step["compiled"]
    again = _inputs((1, 1, 1), seed=8, spatial=(), momentum=0.5)  # new values, eps/momentum traced: no compile
    out = backend.step(sharded_request(again, "float64"))
    assert not backend.last_step["compiled"]
    assert all(v is Verdict.CONFORMS for v in _verdicts(backend, again, out, "float64").values())


def _equal_weight_prediction(sharded: ShardedInputs) -> dict:
    """What Flax's pmean of per-replica masked means computes, and its exact gradient: mean = (1/W) sum_r E_r[x],
    var = (1/W) sum_r E_r[x^2] - mean^2 (spec.replicas.combined_stats, EQUAL_WEIGHT_MOMENTS); y normalized with
    them, running statistics updated from them (old-weight momentum, biased variance); a row of replica r enters
    mean and var with weight 1/(W n_r) instead of 1/N, so
        dx = gamma * invstd * (dy - (sum(dy) + xhat * sum(dy * xhat)) / (W n_r)),  dgamma = sum(dy * xhat)."""
    world = sharded.world_size
    stats = combined_stats([partial_stats(s, 1) for s in sharded.shards], Combine.EQUAL_WEIGHT_MOMENTS)
    shape = (1, -1) + (1,) * (sharded.shards[0].ndim - 2)
    reduce = (0, *range(2, sharded.shards[0].ndim))
    x, dy = np.concatenate(sharded.shards), np.concatenate(sharded.dys)
    invstd = 1 / np.sqrt(stats.var.reshape(shape) + sharded.eps)
    xhat = (x - stats.mean.reshape(shape)) * invstd
    gamma, m = sharded.gamma.reshape(shape), sharded.momentum
    counts = [s.size // s.shape[1] for s in sharded.shards]  # n_r: values per channel on replica r
    weight = np.concatenate([np.full(len(s), 1 / (world * max(n, 1))) for s, n in zip(sharded.shards, counts)])
    weight = weight.reshape(-1, *[1] * (x.ndim - 1))
    s1, s2 = dy.sum(reduce).reshape(shape), (dy * xhat).sum(reduce).reshape(shape)
    return {
        "y": xhat * gamma + sharded.beta.reshape(shape),
        "dx": gamma * invstd * (dy - (s1 + xhat * s2) * weight),
        "dgamma": (dy * xhat).sum(reduce),
        "running_mean": m * sharded.running.mean + (1 - m) * stats.mean,
        "running_var": m * sharded.running.var + (1 - m) * stats.var,
    }


def _check_equal_weight(out, predicted, world):
    close = dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.concatenate(out.y), predicted["y"], **close)
    np.testing.assert_allclose(np.concatenate(out.dx), predicted["dx"], **close)
    np.testing.assert_allclose(out.dgamma, predicted["dgamma"], **close)
    for r in range(world):  # every replica holds the same (equal-weight) running statistics
        np.testing.assert_allclose(out.running_mean[r], predicted["running_mean"], **close)
        np.testing.assert_allclose(out.running_var[r], predicted["running_var"], **close)


@pytest.mark.parametrize("backend", FLAX, ids=lambda b: b.library)
def test_flax_unequal_shards_weigh_replicas_equally_not_by_count(backend):
    """Known discrepancy: Flax's `maybe_distributed_mean` (flax/linen/normalization.py and flax/nnx/nn/
    normalization.py, `_compute_stats`) takes `x.mean(axes, where=mask)` per replica, then `lax.pmean` over
    replicas: each replica weighs 1/W whatever its count, so unequal shards do not get the global statistics."""
    sharded = _inputs((2, 6), seed=3)  # replica 0's shard is offset from replica 1's: the means differ a lot
    shifted = (sharded.shards[0] + 4.0, sharded.shards[1])
    sharded = ShardedInputs(**{**sharded.__dict__, "shards": shifted})
    out = backend.step(sharded_request(sharded, "float64"))
    verdicts = _verdicts(backend, sharded, out, "float64")
    for q in ("y", "dx", "dgamma", "running_mean[0]", "running_var[1]"):
        assert verdicts[q] is Verdict.NON_CONFORMANT, verdicts
    assert verdicts["dbeta"] is Verdict.CONFORMS  # sum(dy): no statistics in it
    _check_equal_weight(out, _equal_weight_prediction(sharded), 2)


@pytest.mark.parametrize("backend", FLAX, ids=lambda b: b.library)
def test_flax_unequal_shards_with_equal_statistics_still_get_a_wrong_dx(backend):
    """When every replica's shard has the same mean and variance, the equal-weight pmean is the global statistic:
    y, the running statistics and dgamma conform, so the masking is right; dx does not, because its gradient
    still weighs replica r's rows 1/(W n_r) instead of 1/N (W = 3, shards 2, 4, 2): a backward that is not
    count-weighted, visible only in dx."""
    rng = np.random.default_rng(5)
    base = _grid(rng, (2, 3, 2), 2.0, 1.0)
    shards = (base, np.concatenate([base, base[::-1]]), base[::-1])
    dys = tuple(_grid(rng, s.shape) for s in shards)
    sharded = ShardedInputs(**{**_inputs((2, 4, 2)).__dict__, "shards": shards, "dys": dys})
    out = backend.step(sharded_request(sharded, "float64"))
    verdicts = _verdicts(backend, sharded, out, "float64")
    assert verdicts.pop("dx") is Verdict.NON_CONFORMANT
    assert all(v is Verdict.CONFORMS for v in verdicts.values()), verdicts
    _check_equal_weight(out, _equal_weight_prediction(sharded), 3)


@pytest.mark.parametrize("backend", FLAX, ids=lambda b: b.library)
def test_flax_an_empty_shard_makes_every_replica_nan(backend):
    """An all-masked shard's `x.mean(axes, where=mask)` is 0/0 = NaN, and the pmean spreads it: every replica's
    y, dx, dgamma and running statistics are NaN (dbeta, the sum of dy, is not)."""
    sharded = _inputs((4, 0), seed=4)
    out = backend.step(sharded_request(sharded, "float32"))
    assert out.y[1].shape[0] == 0 and np.isnan(out.y[0]).all() and np.isnan(out.dx[0]).all()
    assert np.isnan(out.dgamma).all() and np.isfinite(out.dbeta).all()
    assert all(np.isnan(m).all() and np.isnan(v).all() for m, v in zip(out.running_mean, out.running_var))


@pytest.mark.parametrize("backend", UNMASKED, ids=lambda b: b.library)
def test_haiku_and_equinox_refuse_unequal_and_empty_shards_with_the_reason(backend):
    # the reason holds for the installed library: its __call__ takes no mask
    assert "mask" not in inspect.signature(_layer_call(backend.library)).parameters
    with pytest.raises(InputError, match="unequal sizes.*has no mask argument"):
        backend.step(sharded_request(_inputs((2, 6)), "float32"))
    with pytest.raises(InputError, match="empty shard.*has no mask argument"):  # (4, 0) is refused as unequal
        backend.step(sharded_request(_inputs((0, 0)), "float32"))


def _layer_call(library):
    if library == "haiku":
        import haiku as hk

        return hk.BatchNorm.__call__
    import equinox as eqx

    return eqx.nn.BatchNorm.__call__


def test_equinox_at_counter_zero_reads_its_state_as_the_running_statistics():
    """The single-device known discrepancy jax-equinox-batch-mode-debiases-from-initial-state holds across replicas
    too: with a batch counter of 0 the state is read as the running statistics R themselves, and the first step
    gives (m R + (1 - m) b) / (1 - m) = b + R m / (1 - m) on every replica (b: the global batch statistics)."""
    backend = BY_LIBRARY["equinox"]
    sharded = _inputs((4, 4), seed=1)
    fresh = RunningStats(sharded.running.mean, sharded.running.var, 0)
    sharded = ShardedInputs(**{**sharded.__dict__, "running": fresh})
    out = backend.step(sharded_request(sharded, "float64"))
    x, m = np.concatenate(sharded.shards), sharded.momentum
    batch_mean, batch_var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    for r in range(2):
        np.testing.assert_allclose(out.running_mean[r], batch_mean + sharded.running.mean * m / (1 - m), rtol=1e-12)
        np.testing.assert_allclose(out.running_var[r], batch_var + sharded.running.var * m / (1 - m), rtol=1e-12)


def test_requests_outside_the_declarations_are_refused():
    equinox = BY_LIBRARY["equinox"]
    channels_last = ShardedInputs(**{**_inputs((2, 2)).__dict__, "axis": -1})
    with pytest.raises(InputError, match="channel axis -1"):
        equinox.step(sharded_request(channels_last, "float32"))
    with pytest.raises(InputError, match="5 replicas"):
        equinox.step(sharded_request(_inputs((2,) * 5), "float32"))
    with pytest.raises(InputError, match="dtype 'int8'"):
        equinox.step(sharded_request(_inputs((2, 2)), "int8"))


def test_declarations_without_importing_jax():
    code = ("import sys; from bnconf.adapters import jax_replicas as j; "
            "print([b.unavailable('cpu') for b in j.BACKENDS], [b.unavailable('gpu') is not None for b in j.BACKENDS], "
            "sorted(j.BACKENDS[2].versions()), 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[None, None, None, None] [True, True, True, True] ['dm-haiku', 'jax', 'jaxlib'] False"
    assert len({b.name for b in jax_replicas.BACKENDS}) == 4
    assert all(b.name == b.replica.name for b in jax_replicas.BACKENDS)


def test_a_hung_worker_times_out_a_dead_one_crashes_and_none_survives():
    group = ReplicaGroup(jax_replicas.WORKER, processes=1, env=jax_replicas.WORKER_ENV, timeout=1.0,
                         startup_timeout=jax_replicas.STARTUP_TIMEOUT, label="test JAX worker")
    try:
        assert len(group.call([{"fault": "devices"}])[0]) == jax_replicas.HOST_DEVICES  # XLA_FLAGS reached JAX
        process = group._procs[0]
        with pytest.raises(ReplicaTimeout, match="did not answer within 1 s"):
            group.call([{"fault": "hang", "seconds": 60}])
        assert process.poll() is not None and not group.running
        with pytest.raises(ReplicaCrash, match="exit code 3"):  # a fresh process, which dies
            group.call([{"fault": "exit", "code": 3}])
        assert not group.running
    finally:
        group.close()


def test_the_shared_worker_restarts_after_it_was_stopped():
    backend = BY_LIBRARY["haiku"]
    sharded = _inputs((3, 3), seed=9)
    backend.step(sharded_request(sharded, "float32"))
    jax_replicas.close()
    out = backend.step(sharded_request(sharded, "float32"))  # a fresh process: compiles again, same answer
    assert backend.last_step["compiled"]
    assert all(v is Verdict.CONFORMS for v in _verdicts(backend, sharded, out, "float32").values())


@pytest.mark.parametrize("library, rows", [("linen", (4, 2, 3)), ("equinox", (3, 3))])
def test_a_replica_step_loaded_from_the_program_cache_gives_what_the_compiled_one_gives(library, rows, tmp_path,
                                                                                     monkeypatch):
    """A fresh worker process loads the sharded step a previous one compiled (adapters/jax_cache.py, over the
    mesh's devices): the same outputs bit for bit, unequal shards (masked) and the backward included."""
    from bnconf.adapters import jax_cache

    monkeypatch.setenv(jax_cache.ENV, str(tmp_path))
    backend = BY_LIBRARY[library]
    sharded = _inputs(rows, seed=11)
    outputs = []
    for _ in range(2):
        jax_replicas.close()  # a fresh worker process, with the cache folder in its environment
        out = backend.step(sharded_request(sharded, "float32"))
        outputs.append((out, dict(backend.last_step)))
    jax_replicas.close()
    (first, made), (second, loaded) = outputs
    assert made["compiled"] and not made["loaded"] and loaded["compiled"] and loaded["loaded"]
    for name in ("y", "dx", "running_mean", "running_var", "dgamma", "dbeta"):
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None) == (b is None), name
        if a is not None:
            for u, v in zip(a if isinstance(a, (list, tuple)) else [a], b if isinstance(b, (list, tuple)) else [b]):
                np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)
