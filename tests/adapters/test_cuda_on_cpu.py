"""The CUDA execution model on the CPU (adapters/cuda/cuda_on_cpu.h) and its build (adapters/cuda_build.py).

Tiny test kernels in tests/adapters/cuda_kernels/*.cu, compiled unchanged with g++ and the header, check:
block reductions through shared memory and __syncthreads (1-D and 2-D blocks, threads that return early),
warp shuffles against CUDA's documented lane semantics, atomics and a last-block-merges grid reduction,
float16/bfloat16 conversions against NumPy/ml_dtypes (all 65536 bit patterns each way they widen, a sample
of float32 values the way they round), float4 loads with streaming stores. ThreadSanitizer builds run one
small launch per kernel (test kernels and the batch-norm kernels) and must be clean; with
the barrier of the block reduction removed TSan must report the race.
"""

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from bnconf.adapters import cuda_build

pytestmark = pytest.mark.skipif(not cuda_build.gxx_available(), reason="no g++: the CPU CUDA build needs a C++20 compiler")

KERNELS = Path(__file__).parent / "cuda_kernels"
SHIM = KERNELS / "kernels_cpu.cpp"
TSAN_DRIVER = KERNELS / "tsan_driver.cpp"
BATCHNORM_CU = cuda_build.CUDA_DIR / "batchnorm.cu"
BATCHNORM_CPU = cuda_build.CUDA_DIR / "batchnorm_cpu.cpp"
BATCHNORM_TSAN_DRIVER = KERNELS / "batchnorm_tsan_driver.cpp"

P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "launch_block_sum": (P, P, I, I),
    "launch_block_index_sum": (P, I, I, I, I),
    "launch_early_exit_sum": (P, P, I, I, I),
    "launch_warp_sums": (P, P, I, I),
    "launch_warp_allreduce": (P, P, I, I),
    "launch_shuffle_probe": (P, I, I, I),
    "launch_warp_ballot": (P, P, F, I),
    "launch_grid_sum": (P, P, P, P, I, I),
    "launch_atomic_counts": (P, P, P, P, I, I),
    "launch_float_to_half_bits": (P, P, I),
    "launch_half_bits_to_float": (P, P, I),
    "launch_float_to_bfloat16_bits": (P, P, I),
    "launch_bfloat16_bits_to_float": (P, P, I),
    "launch_axpb4": (P, P, F, F, I),
    "launch_half_scale": (P, P, F, I),
}


@pytest.fixture(scope="module")
def lib():
    library = cuda_build.load_library([SHIM], name="test_kernels")
    for name, argtypes in SIGNATURES.items():
        getattr(library, name).argtypes = argtypes
        getattr(library, name).restype = None
    return library


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous
    return a.ctypes.data


# ------------------------------------------------------------------------------------ blocks and barriers
@pytest.mark.parametrize("n, blocks", [(1, 1), (1000, 3), (10_000, 7)])
def test_block_reduction_through_shared_memory(lib, n, blocks):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    sums = np.zeros(blocks, np.float32)
    lib.launch_block_sum(ptr(x), ptr(sums), n, blocks)
    assert sums.sum(dtype=np.float64) == pytest.approx(x.sum(dtype=np.float64), rel=1e-5, abs=1e-4)


def test_two_dimensional_blocks_and_grid(lib):
    out = np.zeros(3 * 2, np.int32)
    lib.launch_block_index_sum(ptr(out), 3, 2, 16, 4)  # 64 threads as 16 x 4
    assert (out == 63 * 64 // 2).all()


def test_threads_that_return_early_do_not_stall_the_barrier(lib):
    x = np.arange(3 * 40, dtype=np.float32)
    out = np.zeros(3, np.float32)
    lib.launch_early_exit_sum(ptr(x), ptr(out), 40, 3, 64)
    np.testing.assert_array_equal(out, x.reshape(3, 40).sum(axis=1))


def test_bad_block_size_is_refused_with_a_message(tmp_path):
    """A block of 48 threads (not a multiple of 32): launch throws, the message names the problem."""
    library = cuda_build.build_library([SHIM], name="test_kernels")
    script = textwrap.dedent(f"""
        import ctypes
        lib = ctypes.CDLL({str(library)!r})
        lib.launch_early_exit_sum(None, None, 0, 1, 48)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "block size must be a multiple of 32" in done.stderr


# ------------------------------------------------------------------------------------------------- warps
def test_warp_shuffle_down_reduction(lib):
    x = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    sums = np.zeros(8, np.float32)
    lib.launch_warp_sums(ptr(x), ptr(sums), 256, 128)
    np.testing.assert_allclose(sums, x.reshape(8, 32).sum(axis=1), rtol=1e-5, atol=1e-5)


def test_warp_shuffle_xor_allreduce(lib):
    x = np.arange(128, dtype=np.int32)
    out = np.zeros(128, np.int32)
    lib.launch_warp_allreduce(ptr(x), ptr(out), 128, 64)
    np.testing.assert_array_equal(out, np.repeat(x.reshape(4, 32).sum(axis=1), 32))


def _cuda_shuffle_source(kind: str, lane: int, arg: int, width: int) -> int:
    """The source lane of each shuffle, as the CUDA C++ Programming Guide describes it."""
    base = lane - lane % width
    if kind == "idx":  # srcLane modulo width, within the caller's subsection
        return base + arg % width
    if kind == "up":  # lower delta lanes of each subsection keep their value
        return lane - arg if lane % width >= arg else lane
    if kind == "down":  # upper delta lanes keep their value
        return lane + arg if lane % width + arg < width else lane
    target = lane ^ arg  # xor: a lane of a later subsection gives the caller its own value
    return lane if target >= base + width else target


SHUFFLE_CASES = [(kind, width, arg) for kind in ("idx", "up", "down", "xor") for width in (32, 8)
                 for arg in (0, 1, 3, 16, 37) if kind == "idx" or arg < 32]  # srcLane may exceed 31; delta, mask not


@pytest.mark.parametrize("kind, width, arg", SHUFFLE_CASES)
def test_shuffle_lane_semantics(lib, kind, width, arg):
    out = np.zeros(32, np.uint32)
    lib.launch_shuffle_probe(ptr(out), ["idx", "up", "down", "xor"].index(kind), arg, width)
    expected = [100 * _cuda_shuffle_source(kind, lane, arg, width) for lane in range(32)]
    np.testing.assert_array_equal(out, expected)


def test_ballot(lib):
    x = np.random.default_rng(2).standard_normal(128).astype(np.float32)
    out = np.zeros(4, np.uint32)
    lib.launch_warp_ballot(ptr(x), ptr(out), 0.25, 128)
    bits = (x > 0.25).reshape(4, 32)
    np.testing.assert_array_equal(out, [sum(int(b) << k for k, b in enumerate(row)) for row in bits])


# ----------------------------------------------------------------------------------------------- atomics
def test_last_block_merges_and_resets_the_counter(lib):
    counter = np.zeros(1, np.uint32)
    for n, blocks in [(1000, 3), (5000, 9), (64, 1)]:
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        partials, out = np.zeros(blocks, np.float32), np.zeros(1, np.float32)
        lib.launch_grid_sum(ptr(x), ptr(partials), ptr(counter), ptr(out), n, blocks)
        assert out[0] == pytest.approx(x.sum(dtype=np.float64), rel=1e-5, abs=1e-4)
        assert counter[0] == 0  # left ready for the next launch


def test_atomics_across_blocks(lib):
    fsum, isum, usum, cas_max = np.zeros(1, np.float32), np.zeros(1, np.int32), np.zeros(1, np.uint32), np.zeros(1, np.int32)
    lib.launch_atomic_counts(ptr(fsum), ptr(isum), ptr(usum), ptr(cas_max), 5, 64)
    assert (fsum[0], isum[0], usum[0], cas_max[0]) == (160.0, 319 * 320 // 2, 640, 319)


# ------------------------------------------------------------------------------- float16 and bfloat16
ALL_16_BIT = np.arange(65536, dtype=np.uint32).astype(np.uint16)


def _widen(lib, fn, bits: np.ndarray) -> np.ndarray:
    out = np.zeros(bits.size, np.float32)
    fn(ptr(bits), ptr(out), bits.size)
    return out


def _narrow(lib, fn, x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.size, np.uint16)
    fn(ptr(x), ptr(out), x.size)
    return out


def _assert_same_floats(got: np.ndarray, expected: np.ndarray):
    """Bitwise equal, except that any NaN matches any NaN of the same sign (payloads are unspecified)."""
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.signbit(got[nan]), np.signbit(expected[nan]))
    np.testing.assert_array_equal(got[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def _float32_sample(narrow_dtype, seed: int) -> np.ndarray:
    """Every value of the narrow type, the midpoints between neighbours (ties) and one float32 ulp either
    side, special values, and random float32 bit patterns."""
    wide = ALL_16_BIT.view(narrow_dtype).astype(np.float32)
    finite = np.unique(wide[np.isfinite(wide)].astype(np.float64))
    mid = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact in float32 for both formats
    sample = [wide, mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf)),
              np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 65504, 65519.996, 65520, 1e-8, 2.0 ** -25,
                        2.0 ** -24, 3 * 2.0 ** -26, np.finfo(np.float32).max, np.finfo(np.float32).tiny,
                        np.finfo(np.float32).smallest_subnormal], np.float32),
              np.random.default_rng(seed).integers(0, 2 ** 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)]
    return np.concatenate(sample).astype(np.float32)


def test_half_to_float_on_all_bit_patterns(lib):
    got = _widen(lib, lib.launch_half_bits_to_float, ALL_16_BIT)
    _assert_same_floats(got, ALL_16_BIT.view(np.float16).astype(np.float32))


def test_float_to_half_rounds_to_nearest_even(lib):
    x = _float32_sample(np.float16, 16)
    got = _narrow(lib, lib.launch_float_to_half_bits, x)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to infinity is the expected rounding
        expected = x.astype(np.float16).astype(np.float32)
    _assert_same_floats(got.view(np.float16).astype(np.float32), expected)


def test_bfloat16_to_float_on_all_bit_patterns(lib):
    got = _widen(lib, lib.launch_bfloat16_bits_to_float, ALL_16_BIT)
    _assert_same_floats(got, ALL_16_BIT.view(ml_dtypes.bfloat16).astype(np.float32))


def test_float_to_bfloat16_rounds_to_nearest_even(lib):
    x = _float32_sample(ml_dtypes.bfloat16, 17)
    got = _narrow(lib, lib.launch_float_to_bfloat16_bits, x)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    _assert_same_floats(got.view(ml_dtypes.bfloat16).astype(np.float32), expected)


def test_half_arrays_in_and_out(lib):
    x = np.random.default_rng(3).standard_normal(100).astype(np.float16)
    y = np.zeros(100, np.float16)
    lib.launch_half_scale(ptr(x), ptr(y), 4.0, 100)
    np.testing.assert_array_equal(y, (x.astype(np.float32) * np.float32(0.5)).astype(np.float16))


def test_float4_loads_and_streaming_stores(lib):
    x = np.random.default_rng(4).standard_normal(4 * 100).astype(np.float32)
    y = np.zeros_like(x)
    lib.launch_axpb4(ptr(x), ptr(y), 2.0, -1.0, 100)
    np.testing.assert_array_equal(y, np.float32(2.0) * x + np.float32(-1.0))


# ----------------------------------------------------------------------------------------------- the build
def test_builds_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONF_BUILD_DIR", str(tmp_path / "cache"))
    source = tmp_path / "k.cpp"
    source.write_text('#include "cuda_on_cpu.h"\nextern "C" int answer() { return 42; }\n')
    first = cuda_build.build_library([source])
    assert first.parent == tmp_path / "cache"
    assert cuda_build.build_library([source]) == first  # unchanged: the same file, not rebuilt
    assert ctypes.CDLL(str(first)).answer() == 42
    source.write_text('#include "cuda_on_cpu.h"\nextern "C" int answer() { return 43; }\n')
    assert cuda_build.build_library([source]) != first
    assert cuda_build.build_library([source], defines={"X": 1}) != cuda_build.build_library([source])


def test_compile_errors_name_the_command_and_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BNCONF_BUILD_DIR", str(tmp_path / "cache"))
    source = tmp_path / "broken.cpp"
    source.write_text('#include "cuda_on_cpu.h"\nextern "C" __global__ void k() { undeclared_thing(); }\n')
    with pytest.raises(cuda_build.BuildError) as failure:
        cuda_build.build_library([source])
    message = str(failure.value)
    assert "g++" in message and str(source) in message and "undeclared_thing" in message


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(cuda_build.BuildError, match="no C\\+\\+ compiler"):
        cuda_build.build_library([SHIM])


def test_dynamic_shared_memory_does_not_compile(tmp_path, monkeypatch):
    """`extern __shared__` is outside the supported subset: a compile error, not a silent per-thread array."""
    monkeypatch.setenv("BNCONF_BUILD_DIR", str(tmp_path / "cache"))
    source = tmp_path / "dyn.cpp"
    source.write_text('#include "cuda_on_cpu.h"\n__global__ void k(float* y) { extern __shared__ float s[]; y[0] = s[0]; }\n')
    with pytest.raises(cuda_build.BuildError):
        cuda_build.build_library([source])


# ------------------------------------------------------------------------------------------ ThreadSanitizer
def _tsan_executable(sources, name: str, defines=()):
    try:
        return cuda_build.build_executable(sources, sanitize_thread=True, defines=defines, name=name)
    except cuda_build.BuildError as error:
        if "ltsan" in str(error) or "libtsan" in str(error):
            pytest.skip(f"no ThreadSanitizer runtime for this compiler: {error}")
        raise


def _tsan_driver(defines=()):
    return _tsan_executable([SHIM, TSAN_DRIVER], "test_kernels", defines)


@pytest.mark.slow  # a ThreadSanitizer build: 5-8 s alone, 10-19 s on a loaded machine
@pytest.mark.parametrize("kernel", ["block_sum", "block_index_sum", "early_exit_sum", "warp_sums", "warp_allreduce",
                                    "warp_ballot", "grid_sum", "atomic_counts", "conversions", "axpb4"])
def test_thread_sanitizer_is_clean_on_the_test_kernels(kernel):
    run = cuda_build.run_tsan(_tsan_driver(), [kernel])
    assert run.clean, run.output[-6000:]


@pytest.mark.slow  # a ThreadSanitizer build: 5-8 s alone, 10-19 s on a loaded machine
def test_thread_sanitizer_catches_a_removed_syncthreads():
    run = cuda_build.run_tsan(_tsan_driver(defines=["BNCONF_TEST_DROP_SYNC"]), ["block_sum"])
    assert run.races >= 1, run.output[-6000:]
    assert "block_reduce.cu" in run.output  # the race is reported in the kernel, not in the header


@pytest.mark.slow  # a ThreadSanitizer build: 5-8 s alone, 10-19 s on a loaded machine
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_thread_sanitizer_is_clean_on_the_batchnorm_kernels(layout):
    """One small launch of each batch-norm kernel (every mode, float32/float16/bfloat16, both load widths)."""
    exe = _tsan_executable([BATCHNORM_CPU, BATCHNORM_TSAN_DRIVER], "batchnorm")
    run = cuda_build.run_tsan(exe, [layout])
    assert run.clean, run.output[-6000:]
