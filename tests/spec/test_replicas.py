"""Batch norm across replicas (spec/replicas.py, SPEC.md section 6): the float64 reference of a replica step,
its expected values and bounds, the Chan merge and the combine rules, the running policies."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bnconf.spec import InputError, Mode, RunningStats, convention, expected, precision_for
from bnconf.spec.conventions import Variance
from bnconf.spec.error_model import Summation, VarianceAlgorithm
from bnconf.spec.oracle import batch_stats
from bnconf.spec.replica_conventions import KERAS_SYNC, NUMPY_SYNC, TORCH_DDP, TORCH_SYNC_BATCHNORM
from bnconf.spec.replicas import (
    Combine,
    RunningPolicy,
    Semantics,
    ShardedInputs,
    combine_precision,
    combined_stats,
    expected_step,
    merged,
    partial_stats,
    sharded_step,
    split_rows,
)
from bnconf.spec.verdict import Verdict, compare

TORCH = convention("torch.nn.functional.batch_norm")
F32, F64 = precision_for("float32"), precision_for("float64")


def _sharded(rows, seed=0, channels=3, spatial=(), mean=3.0, std=2.0, running=True, backward=True, eps=1e-5):
    rng = np.random.default_rng(seed)
    x = rng.normal(mean, std, (sum(rows), channels, *spatial))
    dy = rng.normal(size=x.shape)
    return ShardedInputs(
        shards=split_rows(x, rows), axis=1, eps=eps, gamma=rng.normal(size=channels), beta=rng.normal(size=channels),
        running=RunningStats(rng.normal(size=channels), np.exp(rng.normal(size=channels)), 2) if running else None,
        momentum=0.1, dys=split_rows(dy, rows) if backward else None)


def _same(a, b):
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.bound, b.bound)
    np.testing.assert_array_equal(np.broadcast_to(a.ill, a.value.shape), np.broadcast_to(b.ill, b.value.shape))


# ---------------------------------------------------------------- the synchronized step


@pytest.mark.parametrize("precision", [F64, F32], ids=["float64", "float32"])
def test_synchronized_over_one_replica_is_single_device_batch_norm(precision):
    s = _sharded((9,), spatial=(2,))
    got = expected_step(s, TORCH, NUMPY_SYNC, precision, backward=True)
    full = s.concatenated()
    fwd = expected(Mode.TRAIN_FORWARD, replace(full, dy=None), TORCH, precision)
    bwd = expected(Mode.TRAIN_BACKWARD, replace(full, running=None), TORCH, precision)
    assert list(got) == ["y", "running_mean", "running_var", "dx", "dgamma", "dbeta"]
    _same(got["y"], fwd["y"])
    for q in ("dx", "dgamma", "dbeta"):
        _same(got[q], bwd[q])
    for q in ("running_mean", "running_var"):
        assert got[q].value.shape == (1, 3) and got[q].channel_axis == 1
        np.testing.assert_array_equal(got[q].value[0], fwd[q].value)
        np.testing.assert_array_equal(got[q].bound[0], fwd[q].bound)


@pytest.mark.parametrize("rows", [(4, 4), (2, 6, 3), (5, 0, 3), (1, 1, 1, 1), (0, 7)])
def test_synchronized_values_do_not_depend_on_the_split(rows):
    """Concatenation invariance: the reference of any split is single-device batch norm of the whole batch."""
    s = _sharded(rows)
    whole = sharded_step(replace(s, shards=(np.concatenate(s.shards),), dys=(np.concatenate(s.dys),)), TORCH,
                         NUMPY_SYNC).stacked()
    split = sharded_step(s, TORCH, NUMPY_SYNC).stacked()
    for q in ("y", "dx", "dgamma", "dbeta"):
        np.testing.assert_array_equal(split[q], whole[q])
    for q in ("running_mean", "running_var"):
        assert split[q].shape == (len(rows), 3)
        np.testing.assert_array_equal(split[q], np.broadcast_to(whole[q], split[q].shape))


def test_running_variance_bessel_correction_uses_the_global_count():
    s = _sharded((2, 6, 3), spatial=(2,))
    step = sharded_step(s, TORCH, NUMPY_SYNC)
    x = np.concatenate(s.shards)
    n = x.size // 3
    var = batch_stats(x, 1).var
    want = 0.9 * s.running.var + 0.1 * var * n / (n - 1)
    for r in step.running:
        np.testing.assert_allclose(r.var, want, rtol=1e-14)


def test_expected_step_values_are_the_reference_for_every_record_and_split():
    for rows in ((3, 5), (4, 0, 2), (6,)):
        s = _sharded(rows)
        for replica in (NUMPY_SYNC, KERAS_SYNC, TORCH_SYNC_BATCHNORM, TORCH_DDP,
                        *(replace(TORCH_DDP, running=p) for p in RunningPolicy)):
            exp = expected_step(s, TORCH, replica, F32, backward=True)
            ref = sharded_step(s, TORCH, replica).stacked()
            assert set(exp) == set(ref)
            for q, e in exp.items():
                np.testing.assert_allclose(e.value, ref[q], rtol=1e-13, atol=1e-13, err_msg=f"{replica.name} {rows} {q}")


def test_keys_follow_what_the_step_is_given():
    s = _sharded((3, 4), running=False, backward=False)
    assert list(expected_step(s, TORCH, NUMPY_SYNC, F32, backward=False)) == ["y"]
    with pytest.raises(InputError, match="dy shards"):
        expected_step(s, TORCH, NUMPY_SYNC, F32, backward=True)


def test_an_empty_whole_batch_leaves_the_running_statistics_unchanged():
    s = _sharded((0, 0))
    exp = expected_step(s, TORCH, NUMPY_SYNC, F32, backward=True)
    assert exp["y"].value.shape == (0, 3)
    np.testing.assert_array_equal(exp["running_var"].value, np.stack([s.running.var] * 2))
    assert not exp["running_var"].bound.any() and not exp["dgamma"].value.any()


# ---------------------------------------------------------------- the combine step in the error model


def test_summation_combine_adds_one_rounding_per_partial():
    assert Summation(None, combine=3).factor(10) == 9 + 3
    assert Summation(32, combine=1).factor(1000) == Summation(32).factor(1000) + 1
    p = combine_precision(F32, Combine.CHAN_MERGE, 4)
    assert p.summation.combine == 3 and p.variance is VarianceAlgorithm.WELFORD
    assert combine_precision(F32, Combine.SUMS, 1).variance is VarianceAlgorithm.ONE_PASS
    assert combine_precision(F32, Combine.CHAN_MERGE, 1).variance is VarianceAlgorithm.TWO_PASS


def test_a_sums_combine_is_judged_by_the_one_pass_bound():
    """All-reduced sum(x) and sum(x**2) are E[x**2] - E[x]**2: its bound is the one-pass one, wider at large
    |mean|/std than the merge's."""
    s = _sharded((8, 8), mean=300.0, std=1.0)
    sums = expected_step(s, TORCH, KERAS_SYNC, F32, backward=False)
    merge = expected_step(s, TORCH, NUMPY_SYNC, F32, backward=False)
    assert (sums["y"].bound > 10 * merge["y"].bound).all()
    np.testing.assert_array_equal(sums["y"].bound, sums["y"].bound_one_pass)


def _torch_sync_rebuilt_running_var(s: ShardedInputs, dt=np.float32):
    """torch.nn.SyncBatchNorm's arithmetic in float32: per replica (count, mean, invstd); var rebuilt as
    1 / invstd**2 - eps; merged count-weighted; running_var with the global count's Bessel correction."""
    eps, parts = dt(s.eps), []
    for x in s.shards:
        x = x.astype(dt)
        mean = x.mean(axis=0)
        invstd = dt(1) / np.sqrt(((x - mean) ** 2).mean(axis=0) + eps)
        parts.append((x.shape[0], mean, invstd))
    n = sum(p[0] for p in parts)
    mean = sum(dt(k) * m for k, m, _ in parts) / dt(n)
    var = sum(dt(k) * ((dt(1) / (i * i) - eps) + (m - mean) ** 2) for k, m, i in parts) / dt(n)
    mom = dt(s.momentum)
    return (dt(1) - mom) * s.running.var.astype(dt) + mom * var * dt(n) / dt(n - 1)


def test_invstd_rebuilt_widens_running_var_where_var_is_far_below_eps():
    s = _sharded((16, 16, 16), mean=0.0, std=1e-4, eps=1e-3)
    s = replace(s, shards=tuple(x.astype(np.float32).astype(float) for x in s.shards),
                running=RunningStats(np.zeros(3), np.full(3, float(np.float32(1e-8))), 2))
    observed = np.stack([_torch_sync_rebuilt_running_var(s)] * 3)
    rebuilt = expected_step(s, TORCH, TORCH_SYNC_BATCHNORM, F32, backward=False)["running_var"]
    merge = expected_step(s, TORCH, NUMPY_SYNC, F32, backward=False)["running_var"]
    assert compare("running_var", observed, rebuilt, "float32").verdict is Verdict.CONFORMS
    assert (rebuilt.bound > 10 * merge.bound).all()  # the term is needed: 8 u eps against u var
    assert compare("running_var", observed, merge, "float32").verdict is Verdict.NON_CONFORMANT


# ---------------------------------------------------------------- partial statistics and their merge


_rows = st.lists(st.integers(0, 9), min_size=1, max_size=5).filter(lambda r: sum(r) > 0)


@given(rows=_rows, seed=st.integers(0, 2**16), mean=st.floats(-1e3, 1e3), std=st.floats(1e-2, 1e2))
def test_chan_merge_equals_the_statistics_of_the_concatenation(rows, seed, mean, std):
    x = np.random.default_rng(seed).normal(mean, std, (sum(rows), 2))
    total = merged([partial_stats(part, 1) for part in split_rows(x, rows)])
    ref = batch_stats(x, 1)
    assert total.count == ref.count
    scale = np.abs(ref.mean) + np.sqrt(ref.var)
    np.testing.assert_allclose(total.mean, ref.mean, rtol=0, atol=1e-13 * float(scale.max()))
    np.testing.assert_allclose(total.m2 / total.count, ref.var, rtol=0, atol=1e-12 * float((ref.var + ref.mean**2).max()))


def test_equal_weight_rules_differ_from_the_global_statistics_only_for_unequal_shards():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(m, 1.0, (6, 2)) for m in (0.0, 5.0, -3.0)])
    ref = batch_stats(x, 1)
    for rows, differs in (((6, 6, 6), False), ((2, 12, 4), True), ((6, 0, 12), True)):
        partials = [partial_stats(p, 1) for p in split_rows(x, rows)]
        for combine in Combine:
            got = combined_stats(partials, combine)
            same = np.allclose(got.mean, ref.mean, rtol=1e-12) and np.allclose(got.var, ref.var, rtol=1e-12)
            assert same is (not differs or combine.count_weighted), (rows, combine)


def test_the_two_equal_weight_rules_agree_without_an_empty_shard():
    """mean of E[x**2] minus the squared mean, and mean of E[(x - mean)**2]: the same weighted variance."""
    x = np.random.default_rng(5).normal(2.0, 3.0, (11, 2))
    partials = [partial_stats(p, 1) for p in split_rows(x, (2, 7, 2))]
    a, b = (combined_stats(partials, c) for c in (Combine.EQUAL_WEIGHT_MOMENTS, Combine.EQUAL_WEIGHT_CENTERED))
    np.testing.assert_allclose(a.var, b.var, rtol=1e-12)


# ---------------------------------------------------------------- per-replica semantics


def _per_replica(policy):
    return replace(TORCH_DDP, running=policy)


def test_per_replica_normalizes_each_shard_with_its_own_statistics():
    s = _sharded((3, 5, 0, 4))
    step = sharded_step(s, TORCH, _per_replica(RunningPolicy.PER_REPLICA))
    for r, (x, y) in enumerate(zip(s.shards, step.y)):
        if len(x):
            m, v = x.mean(axis=0), x.var(axis=0)
            np.testing.assert_allclose(y, (x - m) / np.sqrt(v + s.eps) * s.gamma + s.beta, rtol=1e-12, atol=1e-12)
            n = len(x)
            np.testing.assert_allclose(step.running[r].var, 0.9 * s.running.var + 0.1 * v * n / (n - 1), rtol=1e-12)
    assert step.y[2].shape == (0, 3)
    np.testing.assert_array_equal(step.running[2].mean, s.running.mean)  # an empty shard keeps its statistics
    np.testing.assert_array_equal(step.running[2].var, s.running.var)
    shard_grads = [sharded_step(replace(s, shards=(x,), dys=(d,)), TORCH, _per_replica(RunningPolicy.PER_REPLICA))
                   for x, d in zip(s.shards, s.dys) if len(x)]
    np.testing.assert_allclose(step.dgamma, sum(g.dgamma for g in shard_grads), rtol=1e-13)
    np.testing.assert_allclose(step.dbeta, sum(g.dbeta for g in shard_grads), rtol=1e-13)


def test_running_policies():
    s = _sharded((3, 5, 4))
    own = sharded_step(s, TORCH, _per_replica(RunningPolicy.PER_REPLICA)).running
    assert len({tuple(r.var) for r in own}) == 3
    rank0 = sharded_step(s, TORCH, _per_replica(RunningPolicy.BROADCAST_RANK0)).running
    assert all(np.array_equal(r.var, own[0].var) and np.array_equal(r.mean, own[0].mean) for r in rank0)
    avg = sharded_step(s, TORCH, _per_replica(RunningPolicy.AVERAGED)).running
    np.testing.assert_allclose(avg[1].var, sum(r.var for r in own) / 3, rtol=1e-14)
    glob = sharded_step(s, TORCH, _per_replica(RunningPolicy.GLOBAL)).running
    sync = sharded_step(s, TORCH, NUMPY_SYNC).running
    np.testing.assert_array_equal(glob[2].var, sync[0].var)


def test_per_replica_bounds_sum_and_average_over_replicas():
    s = _sharded((3, 5, 4))
    parts = [expected_step(replace(s, shards=(x,), dys=(d,)), TORCH, _per_replica(RunningPolicy.PER_REPLICA), F32, True)
             for x, d in zip(s.shards, s.dys)]
    exp = expected_step(s, TORCH, _per_replica(RunningPolicy.AVERAGED), F32, True)
    assert (exp["dgamma"].bound >= sum(p["dgamma"].bound for p in parts)).all()
    assert (exp["running_var"].bound[0] >= sum(p["running_var"].bound[0] for p in parts) / 3).all()
    assert exp["y"].value.shape == (12, 3) and exp["y"].channel_axis == 1


def test_per_replica_semantics_need_no_combine_and_synchronized_normalizes_globally():
    assert TORCH_DDP.semantics is Semantics.PER_REPLICA and TORCH_DDP.combine is None
    assert NUMPY_SYNC.combine.count_weighted and TORCH.running_var is Variance.UNBIASED


# ---------------------------------------------------------------- the README's example


def test_the_readme_example_runs_conforms_and_names_the_bug(capsys):
    import contextlib
    import io
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Validating your own synchronized batch norm"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("```\n", section.index("```python"))]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    lines = out.getvalue().splitlines()
    correct, buggy = lines[:6], lines[6:]
    assert [l.split(":")[0] for l in correct] == ["y", "running_mean", "running_var", "dx", "dgamma", "dbeta"]
    assert all(": conforms" in l for l in correct), correct
    assert len(buggy) == 3 and all("non-conformant: combine weighted as if shards were equal" in l for l in buggy), buggy
