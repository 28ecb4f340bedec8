"""bnconf's CUDA kernel as a synchronized batch norm across emulated replicas (adapters/cuda_replicas.py).

On "cpu-emulated" (g++ and cuda_on_cpu.h), W = 1..4 replicas, each shard run through the partial-statistics
kernel on its own: every quantity of a step (y, running statistics, dx, dgamma, dbeta) conforms to the
synchronized oracle (`spec.replicas.expected_step`: single-device batch norm of the concatenation, under the
kernel's declared float32 precision and the Chan merge's error) for equal, unequal and empty shards, one value
per replica and large |mean|/std; one replica is bit for bit the single-device kernel; the merged statistics
match the single-device kernel on the concatenation within the two bounds; a count-0 partial is the merge's
identity. Positive controls: per-replica statistics and an equal-weight merge are caught on unequal shards.
A `gpu` test runs the same on "cuda" where CuPy sees a device.
"""

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from bnconf.adapters import cuda_build
from bnconf.adapters.cuda_kernel import (
    BACKENDS as SINGLE_BACKENDS,
    EMULATED_PROFILE,
    EmulatedDevice,
    LaunchProfile,
    from_storage,
    merge_statistics,
    run_batch_norm,
    to_storage,
)
from bnconf.adapters.cuda_replicas import BACKEND, BACKENDS, layout_of, merged_statistics, run_synchronized_step
from bnconf.adapters.protocol import Request
from bnconf.adapters.replica_protocol import sharded_request
from bnconf.spec import InputError, Mode, expected
from bnconf.spec.conventions import TORCH_FUNCTIONAL
from bnconf.spec.oracle import RunningStats
from bnconf.spec.replica_conventions import CUDA_KERNEL_SYNC
from bnconf.spec.replicas import Combine, ShardedInputs, combine_precision, expected_step
from bnconf.spec.verdict import Verdict, compare, quantity_format

needs_gxx = pytest.mark.skipif(not cuda_build.gxx_available(), reason="no g++ to build the CPU emulation")

C = 3
EPS, MOMENTUM = 1e-5, 0.1  # TORCH_FUNCTIONAL's defaults
# many blocks per shard: the partial statistics come from the last-block merge of the reduction
SPLIT_PROFILE = LaunchProfile(threads=32, target_blocks=1, min_items=1, apply_items=1, max_splits=5, max_apply_splits=3)

SPLITS = {  # rows per replica at W = 1..4 (None: the pattern needs 2 or more replicas)
    "equal": lambda w: (4,) * w,
    "unequal": lambda w: (6, 2, 7, 3)[:w] if w > 1 else None,
    "empty shard": lambda w: (6, 0, 7, 3)[:w] if w > 1 else None,
    "one value per replica": lambda w: (1,) * w if w > 1 else None,
    "large |mean|/std": lambda w: (6,) * w if w > 1 else None,
}
CASES = [(w, s) for w in (1, 2, 3, 4) for s in SPLITS if SPLITS[s](w) is not None]


def _round(a, dtype):
    return from_storage(to_storage(a, dtype), dtype)


def sharded(rows, split: str = "", dtype: str = "float32", spatial=(), channels_last=False, seed=0) -> ShardedInputs:
    """Shards of shape (rows_r, C, *spatial) (or channels last), each replica's data shifted (non-i.i.d.), values
    exactly representable in `dtype` (x, dy) and float32 (parameters, running statistics)."""
    rng = np.random.default_rng(zlib.crc32(f"{rows} {split} {dtype} {spatial} {channels_last} {seed}".encode()))
    offset = np.array([1000.0, -100.0, 10.0]) if split == "large |mean|/std" else rng.uniform(-2, 2, C)
    std = 10.0 ** rng.uniform(-1, 1, C)
    axis = -1 if channels_last else 1
    inner = (*spatial, C) if channels_last else (C, *spatial)
    b = [1] * (1 + len(inner))
    b[axis] = C
    shards, dys = [], []
    for r, n in enumerate(rows):
        shift = 0.75 * (r - (len(rows) - 1) / 2)
        x = ((offset + shift) * std).reshape(b) + std.reshape(b) * rng.standard_normal((n, *inner))
        shards.append(_round(x, dtype))
        dys.append(_round(rng.standard_normal(x.shape), dtype))
    f32 = lambda a: _round(a, "float32")  # noqa: E731
    return ShardedInputs(tuple(shards), axis, EPS, gamma=f32(rng.normal(1, 0.5, C)), beta=f32(rng.normal(0, 1, C)),
                         running=RunningStats(f32(rng.normal(0, 1, C)), f32(rng.random(C) + 0.5), 0),
                         momentum=MOMENTUM, dys=tuple(dys))


def observed(out) -> dict[str, np.ndarray]:
    """The judging shapes: y and dx concatenated over replicas, running statistics stacked (W, C)."""
    return dict(y=np.concatenate(out.y), dx=np.concatenate(out.dx), running_mean=np.stack(out.running_mean),
                running_var=np.stack(out.running_var), dgamma=out.dgamma, dbeta=out.dbeta)


def judged(s: ShardedInputs, obs: dict, dtype: str = "float32"):
    p = BACKEND.precision(dtype, "cpu-emulated")
    exp = expected_step(s, TORCH_FUNCTIONAL, CUDA_KERNEL_SYNC, p, backward=True)
    assert set(exp) == set(obs)
    return {q: compare(q, obs[q], exp[q], quantity_format(q, p)) for q in exp}


def assert_conforms(s: ShardedInputs, obs: dict, dtype: str = "float32"):
    results = judged(s, obs, dtype)
    bad = {q: (c.verdict.name, c.max_ratio, c.detail) for q, c in results.items() if c.verdict is not Verdict.CONFORMS}
    assert not bad, bad
    return results


def step(s: ShardedInputs, dtype="float32", device="cpu-emulated"):
    return BACKEND.step(sharded_request(s, dtype, device))


# ------------------------------------------------------------------------------------------ the record
def test_the_backend_declares_the_kernels_record_and_precision():
    assert BACKENDS == [BACKEND] and BACKEND.name == "bnconf.cuda_kernel[partial statistics]"
    assert BACKEND.replica is CUDA_KERNEL_SYNC and CUDA_KERNEL_SYNC.combine is Combine.CHAN_MERGE
    assert BACKEND.convention is TORCH_FUNCTIONAL is SINGLE_BACKENDS[0].convention
    assert BACKEND.devices == ("cpu-emulated", "cuda") and BACKEND.world_sizes == (1, 2, 3, 4)
    for dtype in BACKEND.dtypes:
        assert BACKEND.precision(dtype, "cpu-emulated") == SINGLE_BACKENDS[0].precision(dtype, "cpu-emulated")
    assert CUDA_KERNEL_SYNC.unequal_shards is None and CUDA_KERNEL_SYNC.empty_shard is None


def test_importing_the_module_imports_no_cupy_and_builds_nothing():
    code = "import sys, bnconf.adapters.cuda_replicas as m; print('cupy' in sys.modules, m.BACKEND.name)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"


def test_devices_say_why_they_are_unavailable():
    assert (BACKEND.unavailable("cpu-emulated") is None) == cuda_build.gxx_available()
    assert BACKEND.unavailable("cuda") == SINGLE_BACKENDS[0].unavailable("cuda")


# ------------------------------------------------------------------------------------------ conformance
@needs_gxx
@pytest.mark.parametrize("world_size, split", CASES, ids=[f"W{w}-{s}" for w, s in CASES])
def test_a_step_conforms_to_the_synchronized_oracle(world_size, split):
    rows = SPLITS[split](world_size)
    s = sharded(rows, split, spatial=(2, 2) if split == "equal" else ())
    out = step(s)
    assert [np.shape(y) for y in out.y] == [np.shape(x) for x in s.shards] == [np.shape(d) for d in out.dx]
    assert_conforms(s, observed(out))


@needs_gxx
@pytest.mark.parametrize("dtype, rows, channels_last", [("float32", (4, 4, 4), True), ("float32", (5, 0, 3), True),
                                                        ("float16", (6, 2, 7), False), ("bfloat16", (6, 0, 7, 3), True)])
def test_channels_last_and_half_inputs_conform(dtype, rows, channels_last):
    s = sharded(rows, dtype=dtype, spatial=(3, 2), channels_last=channels_last)
    out = step(s, dtype)
    for y, dx in zip(out.y, out.dx):  # results come back in the data's format
        assert np.array_equal(_round(y, dtype), y) and np.array_equal(_round(dx, dtype), dx)
    assert_conforms(s, observed(out), dtype)


@needs_gxx
@pytest.mark.parametrize("profile", [EMULATED_PROFILE, SPLIT_PROFILE], ids=["emulated", "5 blocks per channel"])
@pytest.mark.parametrize("shape, axis", [((9, 3, 4, 6), 1), ((40, 5), 1), ((7, 3, 16), -1)])
def test_one_replica_is_the_single_device_kernel_bit_for_bit(profile, shape, axis):
    """W = 1: the same reduction, merge epilogue (finish_stats), apply and dx coefficients (finish_grads)."""
    rng = np.random.default_rng(zlib.crc32(f"{shape}{axis}".encode()))
    c = shape[axis]
    x, dy = _round(rng.standard_normal(shape) * 3 + 50, "float32"), _round(rng.standard_normal(shape), "float32")
    gamma, beta, rm, rv = (_round(a, "float32") for a in (rng.normal(1, .5, c), rng.normal(0, 1, c),
                                                          rng.normal(0, 1, c), rng.random(c) + .5))
    s = ShardedInputs((x,), axis, EPS, gamma, beta, RunningStats(rm, rv, 0), MOMENTUM, (dy,))
    layout = layout_of(shape, axis)
    sync = run_synchronized_step(EmulatedDevice(), layout, sharded_request(s, "float32", "cpu-emulated"), profile)
    single = dict(x=x, axis=axis, eps=EPS, dtype="float32", device="cpu-emulated", momentum=MOMENTUM, gamma=gamma,
                  beta=beta, running_mean=rm, running_var=rv)
    fwd = run_batch_norm(EmulatedDevice(), layout, Mode.TRAIN_FORWARD, Request(**single), profile)
    bwd = run_batch_norm(EmulatedDevice(), layout, Mode.TRAIN_BACKWARD, Request(**single, dy=dy), profile)
    pairs = dict(y=(sync.y[0], fwd.y), running_mean=(sync.running_mean[0], fwd.running_mean),
                 running_var=(sync.running_var[0], fwd.running_var), dx=(sync.dx[0], bwd.dx),
                 dgamma=(sync.dgamma, bwd.dgamma), dbeta=(sync.dbeta, bwd.dbeta))
    for q, (got, want) in pairs.items():
        assert np.array_equal(got, want), q


@needs_gxx
@pytest.mark.parametrize("rows, split", [((6, 2, 7), ""), ((6, 0, 7, 3), ""), ((37, 5), ""),
                                         ((6, 6, 6), "large |mean|/std"), ((1, 1, 1, 1), "")])
def test_merged_statistics_match_the_single_device_kernel_on_the_concatenation(rows, split):
    """Merged (count, mean, M2) of the replicas against the single-device kernel's statistics of the whole
    batch: each within its oracle bound, so they differ by at most the sum of the two bounds."""
    s = sharded(rows, split, spatial=(5,))
    merged = merged_statistics(EmulatedDevice(), "NCHW", sharded_request(s, "float32", "cpu-emulated"), SPLIT_PROFILE)
    full = s.concatenated()
    r = Request(x=full.x, axis=1, eps=EPS, dtype="float32", device="cpu-emulated", momentum=MOMENTUM,
                gamma=s.gamma, beta=s.beta, running_mean=s.running.mean, running_var=s.running.var)
    single = run_batch_norm(EmulatedDevice(), "NCHW", Mode.TRAIN_FORWARD, r, SPLIT_PROFILE)
    p = BACKEND.precision("float32", "cpu-emulated")
    exp_single = expected(Mode.TRAIN_FORWARD, full, TORCH_FUNCTIONAL, p)
    exp_merged = expected(Mode.TRAIN_FORWARD, full, TORCH_FUNCTIONAL, combine_precision(p, Combine.CHAN_MERGE, len(rows)))
    single_values = dict(saved_mean=single.saved_mean, saved_invstd=single.saved_invstd,
                         running_mean=single.running_mean, running_var=single.running_var)
    merged_values = dict(saved_mean=merged["mean"], saved_var=merged["var"], saved_invstd=merged["invstd"],
                         running_mean=merged["running_mean"], running_var=merged["running_var"])
    for q, value in merged_values.items():
        c = compare(q, value, exp_merged[q], quantity_format(q, p))
        assert c.verdict is Verdict.CONFORMS, (q, c.max_ratio, c.detail)
        if q in single_values:
            gap = np.abs(np.asarray(value, np.float64) - np.asarray(single_values[q], np.float64))
            assert (gap <= exp_merged[q].bound + exp_single[q].bound).all(), (q, gap, exp_merged[q].bound)


@needs_gxx
def test_an_empty_replicas_partial_is_the_identity_of_the_merge():
    """(0, mean, M2) merges as nothing, whatever its mean and M2 hold, in any position: bit for bit."""
    device = EmulatedDevice()
    rng = np.random.default_rng(7)
    parts = [(np.full(C, n, np.int32), rng.normal(5, 2, C).astype(np.float32), (rng.random(C) * n).astype(np.float32))
             for n in (6, 2)]
    empty = (np.zeros(C, np.int32), np.full(C, np.nan, np.float32), np.full(C, np.inf, np.float32))
    gamma = np.ones(C, np.float32)

    def merged(ps):
        counts, means, m2s = (np.concatenate([p[k] for p in ps]) for k in range(3))
        running = np.zeros(C, np.float32), np.ones(C, np.float32)
        m = merge_statistics(device, counts, means, m2s, len(ps), C, gamma, EPS, MOMENTUM, *running)
        return np.stack([m.mean, m.var, m.invstd, *running])

    want = merged(parts)
    assert np.isfinite(want).all()
    for ps in ([empty, *parts], [parts[0], empty, parts[1]], [*parts, empty], [empty, parts[0], empty, parts[1]]):
        assert np.array_equal(merged(ps), want)


# ------------------------------------------------------------------------------------------ positive controls
@needs_gxx
def test_per_replica_statistics_are_caught_on_unequal_shards():
    """Each shard through the single-device kernel (plain batch norm per replica) is not synchronized."""
    s = sharded((6, 2, 7, 3), spatial=(2,))
    ys, dxs, dgammas, dbetas = [], [], [], []
    for x, dy in zip(s.shards, s.dys):
        r = dict(x=x, axis=1, eps=EPS, dtype="float32", device="cpu-emulated", momentum=MOMENTUM, gamma=s.gamma,
                 beta=s.beta)
        ys.append(SINGLE_BACKENDS[0].run(Mode.TRAIN_FORWARD, Request(**r)).y)
        g = SINGLE_BACKENDS[0].run(Mode.TRAIN_BACKWARD, Request(**r, dy=dy))
        dxs.append(g.dx)
        dgammas.append(g.dgamma)
        dbetas.append(g.dbeta)
    obs = observed(step(s))
    obs.update(y=np.concatenate(ys), dx=np.concatenate(dxs), dgamma=sum(dgammas), dbeta=sum(dbetas))
    results = judged(s, obs)
    for q in ("y", "dx", "dgamma"):
        assert results[q].verdict is Verdict.NON_CONFORMANT, q


@needs_gxx
def test_a_merge_weighting_replicas_equally_is_caught_on_unequal_shards():
    """The same partials merged with every count set to 1 (each replica weighs 1/W): the mean is off."""
    s = sharded((6, 2, 7, 3))
    device = EmulatedDevice()
    partials = [merged_statistics(device, "NCHW", sharded_request(ShardedInputs((x,), 1, EPS), "float32",
                                                                   "cpu-emulated")) for x in s.shards]
    counts = np.ones(4 * C, np.int32)  # all-gathered counts replaced by 1
    means = np.concatenate([p["mean"] for p in partials])
    m2s = np.concatenate([p["var"] * len(x) for p, x in zip(partials, s.shards)]).astype(np.float32)
    m = merge_statistics(device, counts, means, m2s, 4, C, np.ones(C, np.float32), EPS, MOMENTUM)
    p = BACKEND.precision("float32", "cpu-emulated")
    exp = expected(Mode.TRAIN_FORWARD, s.concatenated(), TORCH_FUNCTIONAL, combine_precision(p, Combine.CHAN_MERGE, 4))
    assert compare("saved_mean", m.mean, exp["saved_mean"], "float32").verdict is Verdict.NON_CONFORMANT
    counts = np.repeat(np.array(s.rows, np.int32), C)  # the right counts: conforms
    m = merge_statistics(device, counts, means, m2s, 4, C, np.ones(C, np.float32), EPS, MOMENTUM)
    assert compare("saved_mean", m.mean, exp["saved_mean"], "float32").verdict is Verdict.CONFORMS


@needs_gxx
def test_a_backward_not_count_weighted_is_caught_on_unequal_shards(monkeypatch):
    """The gradient all-reduce given replica 0's count for every replica (dx divided by local counts)."""
    import bnconf.adapters.cuda_replicas as module

    merge = module.merge_gradient_sums

    def local_counts(device, sum_dy, sum_dyxmu, counts, w, c, invstd, gamma, profile=None):
        return merge(device, sum_dy, sum_dyxmu, np.tile(counts[:c], w), w, c, invstd, gamma, profile=profile)

    s = sharded((6, 2, 7, 3))
    monkeypatch.setattr(module, "merge_gradient_sums", local_counts)
    results = judged(s, observed(step(s)))
    assert results["dx"].verdict is Verdict.NON_CONFORMANT
    assert all(results[q].verdict is Verdict.CONFORMS for q in ("y", "running_mean", "running_var", "dgamma", "dbeta"))


# ------------------------------------------------------------------------------------------ refusals
@needs_gxx
def test_one_value_in_all_is_refused_as_pytorch_does():
    with pytest.raises(ValueError, match="more than one value per channel over all replicas"):
        step(sharded((1,)))
    with pytest.raises(ValueError, match="more than one value"):
        step(sharded((1, 0)))


@pytest.mark.parametrize("change, error, match", [
    (dict(world_size=5), InputError, "5 replicas"),
    (dict(device="cpu"), InputError, "device 'cpu'"),
    (dict(dtype="float64"), InputError, "dtype 'float64'"),
    (dict(axis=2), ValueError, "channel axis 1"),
])
def test_requests_it_cannot_take_are_refused(change, error, match):
    s = sharded((3,) * change.get("world_size", 2), spatial=(C, 2))
    r = sharded_request(s, change.get("dtype", "float32"), change.get("device", "cpu-emulated"))
    if "axis" in change:
        r = sharded_request(ShardedInputs(s.shards, change["axis"], EPS), "float32", "cpu-emulated")
    with pytest.raises(error, match=match):
        BACKEND.step(r)


# ------------------------------------------------------------------------------------------ ThreadSanitizer
@needs_gxx
@pytest.mark.slow  # a ThreadSanitizer build: about 10 s alone
def test_thread_sanitizer_is_clean_on_the_replica_kernels():
    """partial_stats and bwd_partial (two blocks per group, both layouts), merge_stats and bwd_merge."""
    driver = Path(__file__).parent / "cuda_kernels" / "replicas_tsan_driver.cpp"
    sources = [cuda_build.CUDA_DIR / "batchnorm_cpu.cpp", driver]
    try:
        exe = cuda_build.build_executable(sources, sanitize_thread=True, name="batchnorm_replicas")
    except cuda_build.BuildError as error:
        if "ltsan" in str(error) or "libtsan" in str(error):
            pytest.skip(f"no ThreadSanitizer runtime for this compiler: {error}")
        raise
    run = cuda_build.run_tsan(exe)
    assert run.clean, run.output[-6000:]


# ------------------------------------------------------------------------------------------ on a GPU
GPU_CASES = [(1, "equal", (4,) * 1, ()), (4, "equal", (64,) * 4, (32, 32)), (3, "unequal", (96, 8, 40), (16, 16)),
             (4, "empty shard", (6, 0, 7, 3), ()), (4, "one value per replica", (1,) * 4, ()),
             (3, "large |mean|/std", (6,) * 3, ())]


@pytest.mark.gpu
@pytest.mark.parametrize("world_size, split, rows, spatial", GPU_CASES, ids=[f"W{c[0]}-{c[1]}" for c in GPU_CASES])
def test_a_step_on_the_gpu_conforms_and_agrees_with_the_emulation(world_size, split, rows, spatial):
    """The same step on "cuda" (the fast launch configuration: several blocks per channel on the large cases)
    conforms, and differs from the CPU emulation by at most twice the oracle's bound."""
    reason = BACKEND.unavailable("cuda")
    if reason is not None:
        pytest.skip(reason)
    s = sharded(rows, split, spatial=spatial)
    gpu = observed(step(s, device="cuda"))
    assert_conforms(s, gpu)
    emulated = observed(step(s))
    exp = expected_step(s, TORCH_FUNCTIONAL, CUDA_KERNEL_SYNC, BACKEND.precision("float32", "cuda"), backward=True)
    for q, e in exp.items():
        assert (np.abs(gpu[q] - emulated[q]) <= 2 * e.bound).all(), q
