"""Adapter-specific behaviour of the TF1 graph-mode layers (adapters/tensorflow_layers.py)."""

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install -e \".[tensorflow]\")")
pytest.importorskip("tf_keras", reason="tf_keras is not installed (pip install -e \".[tensorflow]\")")

from bnconf.adapters import signed_store, tf_graph_cache  # noqa: E402
from bnconf.adapters import tensorflow_layers as tl  # noqa: E402
from bnconf.adapters.protocol import Request  # noqa: E402
from bnconf.conformance.engine import assess  # noqa: E402
from bnconf.spec import Inputs, Mode, RunningStats  # noqa: E402

RNG = np.random.default_rng(7)
X = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32).astype(np.float64)


def _backend(**kw):
    return tl.V1LayersBatchNormalization(**kw)


def _request(x=X, **kw):
    args = dict(x=x, axis=-1, eps=1e-3, dtype="float32", momentum=0.9, running_mean=np.array([0.5, -0.5]),
                running_var=np.array([2.0, 3.0]), batches_seen=1)
    return Request(**{**args, **kw})


def test_update_ops_forgotten_leaves_moving_statistics_at_their_initial_values():
    forgotten, normal = _backend(fused=True, forget_update_ops=True), _backend(fused=True)
    out = forgotten.run(Mode.TRAIN_FORWARD, _request())
    np.testing.assert_array_equal(out.running_mean, [0.5, -0.5])
    np.testing.assert_array_equal(out.running_var, [2.0, 3.0])
    moved = normal.run(Mode.TRAIN_FORWARD, _request())
    assert not np.allclose(moved.running_mean, [0.5, -0.5])
    np.testing.assert_array_equal(out.y, moved.y)  # the forward itself is the same


def test_graph_built_once_per_signature():
    b = _backend(fused=False)
    for eps, m in [(1e-3, 0.9), (1e-5, 0.5), (0.1, 0.99)]:
        for mode in tl.Mode:
            b.run(mode, _request(eps=eps, momentum=m, dy=np.ones_like(X)))
    assert b.graphs.builds == 1
    b.run(Mode.TRAIN_FORWARD, _request(x=X[:2]))  # another batch size: the same graph (only C is static)
    assert b.graphs.builds == 1
    b.run(Mode.TRAIN_FORWARD, _request(x=X[..., :1], running_mean=None, running_var=None))
    assert b.graphs.builds == 2


def _fresh_graphs(backend, monkeypatch):
    monkeypatch.setattr(backend, "graphs", tl.GraphCache(backend._build, (type(backend).__name__, backend.name)))
    return backend.graphs


def _every_mode(backend, dtype):
    dy = np.random.default_rng(3).standard_normal(X.shape)
    r = _request(dtype=dtype, gamma=np.array([1.5, -0.5]), beta=np.array([0.25, 2.0]), dy=dy)
    return {mode: backend.run(mode, r) for mode in tl.Mode}


@pytest.mark.parametrize("backend", tl.BACKENDS, ids=lambda b: b.name)
def test_a_graph_imported_from_the_cache_gives_what_the_built_one_gives_bit_for_bit(backend, tmp_path, monkeypatch):
    """A later process imports the saved graph instead of building it (one Graph per signature, tf_graph_cache):
    the very graph, so every output of every mode is the same bit for bit; an entry is per backend."""
    monkeypatch.setenv(tf_graph_cache.ENV, str(tmp_path))
    signed_store.secret.cache_clear()
    dtype = "bfloat16" if "tutorial" in backend.name else "float32"
    built = _fresh_graphs(backend, monkeypatch)
    first = _every_mode(backend, dtype)
    assert (built.builds, built.imported) == (1, 0)
    again = _fresh_graphs(backend, monkeypatch)
    second = _every_mode(backend, dtype)
    assert (again.builds, again.imported) == (1, 1)
    fused = {key: g.fused for key, g in again._graphs.items()} == {key: g.fused for key, g in built._graphs.items()}
    assert fused
    for mode in tl.Mode:
        for q in ("y", "dx", "dgamma", "dbeta", "running_mean", "running_var"):
            a, b = getattr(first[mode], q), getattr(second[mode], q)
            assert (a is None) == (b is None), (mode, q)
            if a is not None:
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{mode} {q}")
    others = [b for b in tl.BACKENDS if b is not backend]
    for other in others[:1]:  # another backend's graph of the same signature is not this one's
        assert _fresh_graphs(other, monkeypatch) and (other.run(Mode.TRAIN_FORWARD, _request(dtype=dtype)) is not None)
        assert other.graphs.imported == 0


def test_the_tf_graph_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv(tf_graph_cache.ENV, "off")
    assert tf_graph_cache.cache_dir() is None
    b = _backend(fused=False)
    b.run(Mode.TRAIN_FORWARD, _request())
    _fresh_graphs(b, monkeypatch)
    b.run(Mode.TRAIN_FORWARD, _request())
    assert (b.graphs.builds, b.graphs.imported) == (1, 0)
    monkeypatch.delenv(tf_graph_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tf_graph_cache.cache_dir() == tmp_path / "bnconf" / "tf-graphs"


def test_fused_path_really_fuses_and_float64_falls_back():
    b = _backend(fused=True)
    b.run(Mode.TRAIN_FORWARD, _request())
    b.run(Mode.TRAIN_FORWARD, _request(dtype="float64"))
    fused = {key[1]: g.fused for key, g in b.graphs._graphs.items()}
    assert fused == {"float32": True, "float64": False}


def test_train_eps_bug_is_a_discrepancy_in_train_and_not_in_eval():
    b = tl.TutorialEmaBatchNormalization(train_eps_bug=True)
    inputs = Inputs(x=X, axis=-1, eps=0.1, running=RunningStats(np.zeros(2), np.ones(2), 0), momentum=0.9)
    train = assess(b, Mode.TRAIN_FORWARD, inputs, "float32", "cpu")
    assert train.discrepancy is not None and train.discrepancy_seen and not train.problems()
    evaluation = assess(b, Mode.EVAL_FORWARD, inputs, "float32", "cpu")
    assert evaluation.discrepancy is None and not evaluation.problems()


def test_zero_debiased_average_equals_the_batch_after_one_step():
    b = tl.TutorialEmaBatchNormalization(zero_debias=True)
    out = b.run(Mode.TRAIN_FORWARD, _request(batches_seen=0, momentum=0.99))
    np.testing.assert_allclose(out.running_mean, X.reshape(-1, 2).mean(0), rtol=1e-5)
    np.testing.assert_allclose(out.running_var, X.reshape(-1, 2).var(0), rtol=1e-5)
