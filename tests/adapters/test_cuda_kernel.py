"""bnconf's own CUDA kernel: launch geometry (pure), the kernels under several launch configurations on the CPU
emulation against a float64 reference, input errors, and that the float32 kernels use 128-bit loads and streaming
stores (registers, spills and float64 are gated for every kernel in test_cuda_compile_gates.py).

The conformance battery runs the backends through tests/conformance once they are registered; this file
covers what the battery cannot: that results do not depend on the launch configuration (many blocks per
channel and the last-block merge, odd block counts, 32 to 256 threads), and the GPU compile gates.
"""

import zlib

import numpy as np
import pytest

from bnconf.adapters import cuda_build
from bnconf.adapters.cuda_kernel import (
    BACKENDS,
    CUDA_PROFILE,
    EMULATED_PROFILE,
    KERNEL_SOURCE,
    EmulatedDevice,
    LaunchProfile,
    from_storage,
    launch_geometry,
    run_batch_norm,
    to_storage,
    vector_width,
)
from bnconf.adapters.protocol import Request
from bnconf.conformance.engine import assess
from bnconf.spec import Mode
from bnconf.spec.expect import Inputs
from bnconf.spec.oracle import RunningStats

needs_gxx = pytest.mark.skipif(not cuda_build.gxx_available(), reason="no g++ to build the CPU emulation")
needs_nvcc = pytest.mark.skipif(not cuda_build.nvcc_available(), reason="nvcc is not installed")


# ------------------------------------------------------------------------------------------ geometry
def test_few_channels_are_split_across_blocks_to_fill_the_gpu():
    g = launch_geometry("NCHW", 256, 64, 56 * 56, 4, CUDA_PROFILE)
    assert g.groups == 64 and g.lanes == 1 and g.threads == 256
    assert g.groups * g.reduce_splits >= CUDA_PROFILE.target_blocks  # 1056 blocks for 132 SMs
    packs_per_thread = 256 * 56 * 56 / 4 / (g.reduce_splits * g.threads)
    assert packs_per_thread >= CUDA_PROFILE.min_items


def test_short_reductions_use_one_block_per_channel():
    g = launch_geometry("NCHW", 2, 3, 5, 1, CUDA_PROFILE)
    assert (g.reduce_splits, g.apply_splits, g.groups) == (1, 1, 3)


@pytest.mark.parametrize("c, vec, lanes, groups", [(1, 1, 1, 1), (3, 1, 4, 1), (64, 4, 16, 1), (256, 8, 32, 1),
                                                   (2048, 4, 32, 16), (100, 1, 32, 4)])
def test_nhwc_lanes_are_a_power_of_two_covering_the_channel_packs(c, vec, lanes, groups):
    g = launch_geometry("NHWC", 8, c, 49, vec, CUDA_PROFILE)
    assert (g.lanes, g.groups) == (lanes, groups)
    assert g.threads % g.lanes == 0 and g.lanes * g.groups * vec >= c


def test_the_emulated_profile_keeps_launches_small():
    g = launch_geometry("NCHW", 16, 2, 4096, 4, EMULATED_PROFILE)
    assert g.threads == 32 and 1 < g.reduce_splits <= EMULATED_PROFILE.max_splits
    assert g.apply_splits <= EMULATED_PROFILE.max_apply_splits


def test_vector_width_needs_whole_aligned_packs():
    assert vector_width("NCHW", 3, 8, 4) == 4 and vector_width("NCHW", 3, 6, 4) == 1
    assert vector_width("NHWC", 16, 7, 2) == 8 and vector_width("NHWC", 12, 8, 2) == 1
    assert vector_width("NCHW", 3, 8, 4, addresses=[64, 72]) == 1


@pytest.mark.parametrize("args, match", [(("NCHW", 0, 3, 4), "empty"), (("NCHW", 2**16, 2**10, 2**6), "32-bit"),
                                         (("NCHW", 1, 70000, 2), "grid"), (("NWHC", 1, 2, 2), "layout")])
def test_impossible_geometries_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        launch_geometry(*args, 1, CUDA_PROFILE)


def test_bfloat16_storage_round_trips_and_rounds_to_nearest_even():
    x = np.array([1.0, -2.5, 3.140625, 2.0**-130, 0.0])  # 2**-130: a bfloat16 subnormal
    assert np.array_equal(from_storage(to_storage(x, "bfloat16"), "bfloat16"), x)
    assert from_storage(to_storage(np.array([1 + 2**-8]), "bfloat16"), "bfloat16")[0] == 1.0  # tie to even
    assert from_storage(to_storage(np.array([1 + 3 * 2**-8]), "bfloat16"), "bfloat16")[0] == 1 + 2**-6


# ------------------------------------------------------------------------------------------ the kernels
def _reference(mode, x, axis, gamma, beta, rm, rv, momentum, eps, dy):
    """PyTorch's functional batch norm in float64 NumPy."""
    axis %= x.ndim
    red = tuple(i for i in range(x.ndim) if i != axis)
    shape = [-1 if i == axis else 1 for i in range(x.ndim)]
    b = lambda v: np.reshape(v, shape)  # noqa: E731
    n = x.size // x.shape[axis]
    out = {}
    if mode in (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD):
        mean, var = x.mean(axis=red), x.var(axis=red)
        out["running_mean"] = (1 - momentum) * rm + momentum * mean
        out["running_var"] = (1 - momentum) * rv + momentum * var * n / (n - 1)
    else:
        mean, var = rm, rv
    s = 1 / np.sqrt(var + eps)
    xhat = (x - b(mean)) * b(s)
    out["y"] = xhat * b(gamma) + b(beta)
    if dy is not None:
        out["dbeta"], out["dgamma"] = dy.sum(axis=red), (dy * xhat).sum(axis=red)
        if mode is Mode.TRAIN_BACKWARD:
            out["dx"] = b(gamma * s) * (dy - b(dy.mean(axis=red)) - xhat * b((dy * xhat).mean(axis=red)))
        else:
            out["dx"] = dy * b(gamma * s)
    return out


PROFILES = {
    "one warp, 7 blocks": LaunchProfile(threads=32, target_blocks=1, min_items=1, apply_items=1, max_splits=7,
                                        max_apply_splits=5),
    "256 threads, 3 blocks": LaunchProfile(threads=256, target_blocks=1, min_items=1, apply_items=2, max_splits=3,
                                           max_apply_splits=3),
    "emulated": EMULATED_PROFILE,
}


@needs_gxx
@pytest.mark.parametrize("profile", PROFILES, ids=list(PROFILES))
@pytest.mark.parametrize("layout, shape", [("NCHW", (5, 3, 4, 6)), ("NCHW", (7, 2, 9)), ("NHWC", (3, 5, 7, 16)),
                                           ("NHWC", (6, 4, 3)), ("NHWC", (9, 40))])
@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_results_do_not_depend_on_the_launch_configuration(profile, layout, shape, mode):
    rng = np.random.default_rng(zlib.crc32(f"{layout} {shape} {mode.value}".encode()))  # the same data every run
    axis = 1 if layout == "NCHW" else len(shape) - 1
    c = shape[axis]
    x = (rng.standard_normal(shape) * 2 + 300).astype(np.float32).astype(np.float64)  # |mean|/std = 150
    dy = rng.standard_normal(shape).astype(np.float32).astype(np.float64)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.random(c) + 0.5
    backward = mode in (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
    r = Request(x=x, axis=axis, eps=1e-3, dtype="float32", device="cpu-emulated", momentum=0.25, gamma=gamma,
                beta=beta, running_mean=rm.copy(), running_var=rv.copy(), dy=dy if backward else None)
    out = run_batch_norm(EmulatedDevice(), layout, mode, r, PROFILES[profile])
    expected = _reference(mode, x, axis, gamma, beta, rm, rv, 0.25, 1e-3, r.dy)
    names = {Mode.TRAIN_FORWARD: ("y", "running_mean", "running_var"), Mode.EVAL_FORWARD: ("y",),
             Mode.TRAIN_BACKWARD: ("dx", "dgamma", "dbeta"), Mode.EVAL_BACKWARD: ("dx", "dgamma", "dbeta")}[mode]
    for name in names:
        want = expected[name]
        scale = np.abs(want).max() + 1
        np.testing.assert_allclose(getattr(out, name), want, atol=2e-4 * scale, rtol=0, err_msg=name)
    if mode is Mode.TRAIN_FORWARD:
        np.testing.assert_allclose(out.saved_mean, x.mean(axis=tuple(i for i in range(x.ndim) if i != axis)),
                                   rtol=1e-6)


@needs_gxx
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_inputs_round_once_to_their_format(dtype):
    x = np.linspace(-3, 5, 2 * 3 * 16).reshape(2, 3, 16)
    x = from_storage(to_storage(x, dtype), dtype)
    r = Request(x=x, axis=1, eps=1e-5, dtype=dtype, device="cpu-emulated", momentum=0.1)
    out = BACKENDS[0].run(Mode.TRAIN_FORWARD, r)
    want = _reference(Mode.TRAIN_FORWARD, x, 1, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), 0.1, 1e-5, None)["y"]
    assert np.array_equal(from_storage(to_storage(out.y, dtype), dtype), out.y)  # representable in dtype
    np.testing.assert_allclose(out.y, want, atol=2 ** -7 * 4 if dtype == "bfloat16" else 2 ** -10 * 4)


@needs_gxx
@pytest.mark.parametrize("layout", [0, 1], ids=["NCHW", "NHWC"])
def test_a_channel_whose_mean_squares_past_float32_has_finite_statistics(layout):
    """The Chan merge into an empty accumulator copies the other one: the general rule multiplies the squared
    mean difference (Inf for a local mean near 1e20 or more) by n nb / (n + nb) = 0 and gave NaN for y,
    invstd and running_var (found by the battery: (1, 2, 21), channel 0 of +-6.4e33, a variance past
    float32; the spec allows an infinite variance there, not NaN outputs)."""
    backend = BACKENDS[layout]
    x = np.stack([np.resize([6.4e33, -6.4e33], 21), np.full(21, 0.0074)])[None]  # (1, 2, 21): N C S
    axis = 1
    if layout:
        x, axis = np.moveaxis(x, 1, -1), 2
    inputs = Inputs(x=x, axis=axis, eps=1e-5, gamma=np.array([0.0, 1.5]), beta=np.array([0.25, 0.0]),
                    running=RunningStats(np.zeros(2), np.ones(2), 0), momentum=0.5)
    a = assess(backend, Mode.TRAIN_FORWARD, inputs, "float32", "cpu-emulated")
    assert not a.problems(), {q: c.verdict for q, c in a.problems().items()}
    assert np.isfinite(a.observed["y"]).all() and np.isfinite(a.observed["saved_invstd"]).all()


@pytest.mark.parametrize("backend, axis", [(BACKENDS[0], -1), (BACKENDS[1], 1)], ids=["NCHW", "NHWC"])
def test_a_channel_axis_the_layout_does_not_have_is_refused(backend, axis):
    r = Request(x=np.zeros((2, 3, 4)), axis=axis, eps=1e-5, dtype="float32", device="cpu-emulated", momentum=0.1)
    with pytest.raises(ValueError, match="channel axis"):
        backend.run(Mode.TRAIN_FORWARD, r)


def test_eval_without_running_statistics_is_refused():
    r = Request(x=np.zeros((2, 3)), axis=1, eps=1e-5, dtype="float32", device="cpu-emulated")
    with pytest.raises(ValueError, match="running_mean"):
        BACKENDS[0].run(Mode.EVAL_FORWARD, r)


def test_the_cuda_device_says_why_it_is_unavailable():
    """No cupy: the reason names it; cupy without a device: the reason says so; a device: available."""
    reason = BACKENDS[0].unavailable("cuda")
    try:
        import cupy
    except ImportError:
        assert reason is not None and "cupy" in reason
        return
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError without a driver
        devices = 0
    if devices:
        assert reason is None, reason
    else:
        assert reason is not None and "CUDA device" in reason


# ------------------------------------------------------------------------------------------ nvcc gates
@pytest.fixture(scope="module")
def nvcc_report():
    return cuda_build.nvcc_compile_report(KERNEL_SOURCE, "sm_90")


@needs_nvcc
def test_float32_kernels_move_16_bytes_per_load_and_stream_their_stores(nvcc_report):
    body = nvcc_report.ptx.split(".entry bnconf_apply_nchw_v_f32(")[1].split("\n}\n")[0]
    assert "ld.global.nc.v4.f32" in body and "st.global.cs.v4.f32" in body
