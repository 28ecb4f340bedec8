"""bnconf's own CUDA batch-norm kernel (adapters/cuda/batchnorm.cu) behind the adapter protocol.

Two backends, "bnconf.cuda_kernel[NCHW]" (channel axis 1: the input viewed as (N, C, S)) and
"bnconf.cuda_kernel[NHWC]" (channel axis last: (N, S, C)), any rank from 2 to 5 reshaped to that view.
They declare PyTorch's functional convention (TORCH_FUNCTIONAL: momentum weights the new batch, the
running variance averages the Bessel-corrected batch variance M2 / (n - 1), the output is normalized with
the biased one) and float32 arithmetic: float32, float16 and bfloat16 inputs, every statistic, parameter,
accumulator and gradient of a parameter in float32, the batch variance by Welford/Chan merges.

Devices, running the same source:
    "cuda"          CuPy RawModule (NVRTC) on a GPU, the fast launch configuration;
    "cpu-emulated"  g++ with adapters/cuda/cuda_on_cpu.h (one OS thread per CUDA thread), through ctypes,
                    a small launch configuration (one warp of 32 threads per block, at most 4 blocks per
                    channel group: each shuffle is a 32-thread barrier there).
One pure function, `launch_geometry`, chooses the configuration for both. Neither CuPy nor a compiler is
imported or run at import time: a device says why it is unavailable instead.

For synchronized batch norm across replicas (adapters/cuda_replicas.py), `BatchNormLaunches` also exports one
shard's partial statistics and gradient sums, and `merge_statistics` / `merge_gradient_sums` merge W replicas'.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..spec import Mode, Precision, precision_for
from ..spec.conventions import TORCH_FUNCTIONAL
from ..spec.error_model import VarianceAlgorithm
from .protocol import Outputs, Request

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
KERNEL_SOURCE = CUDA_DIR / "batchnorm.cu"
CPU_SOURCE = CUDA_DIR / "batchnorm_cpu.cpp"

LAYOUTS = ("NCHW", "NHWC")
DTYPE_CODES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
VECTOR_BYTES = 16  # one 128-bit load or store
MAX_THREADS = 256  # the kernels' shared-memory staging is sized for this (bnk::MAX_THREADS)
MAX_ELEMENTS = 2**31 - 1  # the kernels index with 32-bit unsigned integers
MAX_GRID_Y = 65535
TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)


# ------------------------------------------------------------------------------------ launch geometry
@dataclass(frozen=True)
class LaunchProfile:
    """How a device wants its launches shaped.

    threads: per block (a multiple of 32, at most 256); target_blocks: blocks a reduction should spread over
    (a few per SM); min_items: the fewest items (packs nchw, rows nhwc) a thread of a reduction should visit;
    apply_items: the same for the elementwise passes; max_splits / max_apply_splits: blocks per channel group.
    """

    threads: int
    target_blocks: int
    min_items: int
    apply_items: int
    max_splits: int
    max_apply_splits: int


# an H100 has 132 SMs: 8 blocks of 256 threads each fill it; each thread then streams >= 8 x 16 bytes
CUDA_PROFILE = LaunchProfile(threads=256, target_blocks=8 * 132, min_items=8, apply_items=4, max_splits=1024,
                             max_apply_splits=1 << 20)
# one OS thread per CUDA thread (each warp shuffle is a 32-thread barrier): one warp per block, still several
# blocks per channel on long reductions
EMULATED_PROFILE = LaunchProfile(threads=32, target_blocks=8, min_items=32, apply_items=64, max_splits=4,
                                 max_apply_splits=4)
PROFILES = {"cuda": CUDA_PROFILE, "cpu-emulated": EMULATED_PROFILE}


@dataclass(frozen=True)
class Geometry:
    """One launch configuration: the (N, C, S) view, elements per load (vec), nhwc lanes per row, channel
    groups (grid y), threads per block and blocks per group for the reductions and the elementwise passes."""

    layout: str
    n: int
    c: int
    s: int
    vec: int
    lanes: int
    groups: int
    threads: int
    reduce_splits: int
    apply_splits: int

    def kernel(self, kind: str, dtype: str) -> str:
        """The kernel's name in batchnorm.cu, e.g. bnconf_stats_nchw_v_f32."""
        return f"bnconf_{kind}_{self.layout.lower()}_{'v' if self.vec > 1 else 's'}_{DTYPE_CODES[dtype]}"


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def vector_width(layout: str, c: int, s: int, itemsize: int, addresses=()) -> int:
    """Elements per 16-byte load when the contiguous run (S for NCHW, C for NHWC) is a whole number of
    16-byte packs and every address is 16-byte aligned; else 1 (one element per load)."""
    vec = VECTOR_BYTES // itemsize
    run = s if layout == "NCHW" else c
    return vec if run % vec == 0 and all(a % VECTOR_BYTES == 0 for a in addresses) else 1


def launch_geometry(layout: str, n: int, c: int, s: int, vec: int, profile: LaunchProfile) -> Geometry:
    """The grid for an (N, C, S) view: grid y = channel groups (NCHW: one channel; NHWC: `lanes` packs of
    `vec` channels side by side, lanes a power of two <= 32), grid x = blocks splitting each group's items,
    enough to reach `target_blocks` while each thread keeps at least `min_items` (capped by the profile)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if min(n, c, s) < 1:
        raise ValueError(f"empty input: N={n}, C={c}, S={s}")
    if n * c * s > MAX_ELEMENTS:
        raise ValueError(f"{n * c * s} elements: the kernels handle at most {MAX_ELEMENTS} (32-bit indexing)")
    threads = profile.threads
    if layout == "NCHW":
        lanes, groups = 1, c
        items, per_pass = n * s // vec, threads  # packs of the channel; one per thread per pass
    else:
        packs = c // vec
        lanes = min(1 << (packs - 1).bit_length(), 32)
        groups = _ceil_div(packs, lanes)
        items, per_pass = n * s, threads // lanes  # rows; blockDim / lanes rows per pass
    if groups > MAX_GRID_Y:
        raise ValueError(f"{groups} channel groups exceed the grid's y limit of {MAX_GRID_Y}")
    reduce_splits = _clamp(min(_ceil_div(profile.target_blocks, groups), _ceil_div(items, per_pass * profile.min_items)),
                           1, profile.max_splits)
    apply_splits = _clamp(_ceil_div(items, per_pass * profile.apply_items), 1, profile.max_apply_splits)
    return Geometry(layout, n, c, s, vec, lanes, groups, threads, reduce_splits, apply_splits)


def view_dims(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """(N, C, S) of an input of `shape` with its channel axis 1 (NCHW) or last (NHWC)."""
    if len(shape) < 2:
        raise ValueError(f"batch norm needs an input of rank >= 2 (batch, channels, ...), got shape {shape}")
    if layout == "NCHW":
        return shape[0], shape[1], math.prod(shape[2:])
    return shape[0], shape[-1], math.prod(shape[1:-1])


# ------------------------------------------------------------------------------------ storage formats
def to_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    """A contiguous array holding `a` in `dtype`'s bits (bfloat16 as uint16, rounded to nearest even)."""
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.ascontiguousarray(a, dtype=np.dtype(dtype))


def from_storage(a: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values of an array in `dtype`'s bits."""
    if dtype == "bfloat16":
        return (np.asarray(a, dtype=np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


# ------------------------------------------------------------------------------------ kernel signatures
# parameter kinds after (grid x, grid y, block): p pointer, u unsigned, i int, f float
SIGNATURES = {
    "eval_prep": "ppfupp",
    "stats": "puuuuffpippppppppp",
    "apply": "ppuuuuppp",
    "bwd_reduce": "ppuuuupppipppppppp",
    "dx": "pppuuuuipppp",
    # synchronized batch norm across replicas (adapters/cuda_replicas.py)
    "partial_stats": "puuuuppppppp",
    "bwd_partial": "ppuuuupppppp",
    "merge_stats": "pppuuffpipppppp",
    "bwd_merge": "pppuuppppppp",
}
_CTYPES = {"p": ctypes.c_void_p, "u": ctypes.c_uint, "i": ctypes.c_int, "f": ctypes.c_float}
_NUMPY_SCALARS = {"u": np.uint32, "i": np.int32, "f": np.float32}


def _kind(kernel: str) -> str:
    return next(k for k in sorted(SIGNATURES, key=len, reverse=True) if kernel.startswith(f"bnconf_{k}"))


class EmulatedDevice:
    """The kernels compiled by g++ with cuda_on_cpu.h; arrays are NumPy arrays."""

    name = "cpu-emulated"

    @staticmethod
    @functools.cache
    def library() -> ctypes.CDLL:
        from . import cuda_build

        return cuda_build.load_library([CPU_SOURCE], name="bnconf_batchnorm", extra_flags=("-Wno-unknown-pragmas",))

    def asarray(self, a: np.ndarray):
        return np.ascontiguousarray(a)

    def zeros(self, size: int, dtype) -> np.ndarray:
        return np.zeros(size, dtype=dtype)

    def empty_like(self, a):
        return np.empty_like(a)

    def numpy(self, a) -> np.ndarray:
        return a

    def address(self, a) -> int:
        return a.ctypes.data

    def launch(self, kernel: str, grid: tuple[int, int], block: int, *args) -> None:
        kinds = SIGNATURES[_kind(kernel)]
        function = getattr(self.library(), f"launch_{kernel}")
        function.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_uint, *(_CTYPES[k] for k in kinds)]
        function.restype = ctypes.c_int
        values = [a.ctypes.data if k == "p" else a for k, a in zip(kinds, args, strict=True)]
        if function(grid[0], grid[1], block, *values) != 0:
            raise RuntimeError(f"{kernel}: launch refused (grid {grid}, block {block}); see stderr")


class CudaDevice:
    """The kernels compiled by NVRTC through CuPy's RawModule; arrays are CuPy arrays."""

    name = "cuda"

    @staticmethod
    @functools.cache
    def module():
        import cupy

        options = ("--std=c++17", *(f"-I{d}" for d in nvrtc_include_dirs()))
        return cupy.RawModule(code=KERNEL_SOURCE.read_text(), options=options)

    def __init__(self):
        import cupy

        self.cp = cupy

    def asarray(self, a: np.ndarray):
        return self.cp.asarray(np.ascontiguousarray(a))

    def zeros(self, size: int, dtype):
        return self.cp.zeros(size, dtype=dtype)

    def empty_like(self, a):
        return self.cp.empty_like(a)

    def numpy(self, a) -> np.ndarray:
        return self.cp.asnumpy(a)

    def address(self, a) -> int:
        return a.data.ptr

    def launch(self, kernel: str, grid: tuple[int, int], block: int, *args) -> None:
        kinds = SIGNATURES[_kind(kernel)]
        values = [a if k == "p" else _NUMPY_SCALARS[k](a) for k, a in zip(kinds, args, strict=True)]
        self.function(kernel)(grid, (block,), tuple(values))

    @classmethod
    @functools.cache
    def function(cls, kernel: str):
        return cls.module().get_function(kernel)


def nvrtc_include_dirs() -> list[str]:
    """Folders holding cuda_fp16.h for NVRTC: $CUDA_PATH/$CUDA_HOME, /usr/local/cuda, pip's nvidia packages,
    CuPy's bundled copies (cuda_bf16.h must be beside it in one of them)."""
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    candidates = [Path(r) / "include" for r in roots if r]
    try:
        import cupy

        candidates += [p.parent for p in (Path(cupy.__file__).parent / "_core" / "include").glob("**/cuda_fp16.h")]
    except ImportError:
        pass
    try:
        import nvidia  # the pip wheels of the CUDA toolkit (nvidia-cuda-runtime-*, nvidia-cuda-nvrtc-*)

        for base in map(Path, nvidia.__path__):
            candidates += [p.parent for p in base.glob("*/include/cuda_fp16.h")]
    except ImportError:
        pass
    return list(dict.fromkeys(str(d) for d in candidates if (d / "cuda_fp16.h").is_file()))


# ------------------------------------------------------------------------------------ the algorithm
def _params(a, c: int, fill: float) -> np.ndarray:
    return np.full(c, fill, dtype=np.float32) if a is None else np.ascontiguousarray(a, dtype=np.float32)


class BatchNormLaunches:
    """The kernel launches for one input on one device, over device-resident arrays (what a benchmark times).

    `x` (and `dy`) hold the input in its storage format (bfloat16 as uint16) with the channel axis 1 (NCHW)
    or last (NHWC); gamma and beta are float32 device arrays. The result of a pass is in `out` (y or dx);
    statistics in `mean` and `invstd`, parameter gradients in `dgamma` and `dbeta`. The workspace is
    allocated once: the kernels leave their counters at zero, so the same object can launch again.
    """

    def __init__(self, device, layout: str, dtype: str, x, gamma, beta, dy=None, profile: LaunchProfile | None = None):
        if dtype not in DTYPE_CODES:
            raise ValueError(f"dtype {dtype!r} not supported: one of {', '.join(DTYPE_CODES)}")
        self.device, self.dtype = device, dtype
        n, c, s = view_dims(tuple(x.shape), layout)
        self.x, self.dy, self.gamma, self.beta = x, dy, gamma, beta
        self.out = device.empty_like(x)
        addresses = [device.address(a) for a in (x, dy, self.out) if a is not None]
        vec = vector_width(layout, c, s, ITEMSIZE[dtype], addresses)
        g = self.geometry = launch_geometry(layout, n, c, s, vec, profile or PROFILES[device.name])
        f32, parts = np.float32, c * g.reduce_splits
        self.mean, self.invstd, self.scale, self.dgamma, self.dbeta, self.coef_a, self.coef_b, self.coef_k = (
            device.zeros(c, f32) for _ in range(8))
        self.ws_count = device.zeros(parts, np.int32)
        self.ws_a, self.ws_b = device.zeros(parts, f32), device.zeros(parts, f32)
        self.counters = device.zeros(g.groups, np.uint32)
        self.dims = (n, c, s, g.lanes)

    def _launch(self, kind: str, grid_x: int, *args) -> None:
        g = self.geometry
        self.device.launch(g.kernel(kind, self.dtype), (grid_x, g.groups), g.threads, *args)

    def batch_statistics(self, eps: float, momentum: float, running_mean=None, running_var=None) -> None:
        """Batch mean and invstd into `mean`, `invstd` (and scale = invstd gamma); the running statistics
        (float32 device arrays, updated in place) when given."""
        tracked = running_mean is not None
        if not tracked:
            running_mean = running_var = self.coef_a  # never written: update_running = 0
        self._launch("stats", self.geometry.reduce_splits, self.x, *self.dims, eps, momentum, self.gamma,
                     int(tracked), running_mean, running_var, self.ws_count, self.ws_a, self.ws_b, self.counters,
                     self.mean, self.invstd, self.scale)

    def running_statistics(self, eps: float, running_mean, running_var) -> None:
        """For the eval modes: `mean` = running_mean, invstd = 1 / sqrtf(running_var + eps), scale."""
        self.mean = running_mean
        c, threads = self.dims[1], self.geometry.threads
        self.device.launch("bnconf_eval_prep", (_ceil_div(c, threads), 1), threads, running_var, self.gamma, eps, c,
                           self.invstd, self.scale)

    def normalize(self) -> None:
        """out = y = (x - mean) scale + beta."""
        self._launch("apply", self.geometry.apply_splits, self.x, self.out, *self.dims, self.mean, self.scale, self.beta)

    def gradients(self, train: bool) -> None:
        """dgamma, dbeta, and out = dx: through the batch statistics (train) or the fixed ones (eval)."""
        g = self.geometry
        self._launch("bwd_reduce", g.reduce_splits, self.x, self.dy, *self.dims, self.mean, self.invstd, self.gamma,
                     int(train), self.ws_a, self.ws_b, self.counters, self.dgamma, self.dbeta, self.coef_a,
                     self.coef_b, self.coef_k)
        self._launch("dx", g.apply_splits, self.x, self.dy, self.out, *self.dims, int(train), self.mean, self.coef_a,
                     self.coef_b, self.coef_k)

    # -------------------------------------------------------------- one replica of a synchronized batch norm
    def partial_statistics(self, count, mean, m2) -> None:
        """This shard's per-channel (count, mean, M2) into `count` (int32), `mean` and `m2` (float32 device
        arrays of C elements): the reduction of `batch_statistics`, nothing else written."""
        self._launch("partial_stats", self.geometry.reduce_splits, self.x, *self.dims, self.ws_count, self.ws_a,
                     self.ws_b, self.counters, count, mean, m2)

    def gradient_sums(self, mean, sum_dy, sum_dyxmu) -> None:
        """This shard's per-channel sum(dy) and sum(dy (x - mean)) (`mean`: the global one) into `sum_dy` and
        `sum_dyxmu` (float32 device arrays of C elements): the reduction of `gradients`."""
        self._launch("bwd_partial", self.geometry.reduce_splits, self.x, self.dy, *self.dims, mean, self.ws_a,
                     self.ws_b, self.counters, sum_dy, sum_dyxmu)

    def training_input_gradient(self) -> None:
        """out = dx = coef_a (dy - coef_b) - coef_k (x - mean), the coefficients and mean as they are set."""
        self._launch("dx", self.geometry.apply_splits, self.x, self.dy, self.out, *self.dims, 1, self.mean,
                     self.coef_a, self.coef_b, self.coef_k)


@dataclass
class MergedStatistics:
    """What `merge_statistics` leaves on the device, per channel (float32): the batch's mean, biased variance,
    invstd = 1 / sqrtf(var + eps) and scale = invstd gamma."""

    mean: object
    var: object
    invstd: object
    scale: object


def _per_channel_grid(c: int, profile: LaunchProfile) -> tuple[tuple[int, int], int]:
    return (_ceil_div(c, profile.threads), 1), profile.threads


def merge_statistics(device, counts, means, m2s, world_size: int, channels: int, gamma, eps: float, momentum: float,
                     running_mean=None, running_var=None, profile: LaunchProfile | None = None) -> MergedStatistics:
    """bnconf_merge_stats: the (W, C) partials (count int32, mean and M2 float32, row r = replica r) merged
    count-weighted (Chan) on the device; the running statistics (float32 device arrays) updated in place when
    given, by PyTorch's functional rule (momentum weights the new batch, running_var gets M2 / (N - 1))."""
    f32 = np.float32
    merged = MergedStatistics(*(device.zeros(channels, f32) for _ in range(4)))
    tracked = running_mean is not None
    if not tracked:
        running_mean = running_var = device.zeros(1, f32)  # never read or written: update_running = 0
    grid, block = _per_channel_grid(channels, profile or PROFILES[device.name])
    device.launch("bnconf_merge_stats", grid, block, counts, means, m2s, world_size, channels, eps, momentum, gamma,
                  int(tracked), running_mean, running_var, merged.mean, merged.var, merged.invstd, merged.scale)
    return merged


def merge_gradient_sums(device, sum_dy, sum_dyxmu, counts, world_size: int, channels: int, invstd, gamma,
                        profile: LaunchProfile | None = None):
    """bnconf_bwd_merge: the (W, C) per-replica sum(dy) and sum(dy (x - mean)) and counts summed over replicas
    (the all-reduce), then (dgamma, dbeta, coef_a, coef_b, coef_k) of the training backward with the global
    count N, as float32 device arrays of C elements."""
    out = tuple(device.zeros(channels, np.float32) for _ in range(5))
    grid, block = _per_channel_grid(channels, profile or PROFILES[device.name])
    device.launch("bnconf_bwd_merge", grid, block, sum_dy, sum_dyxmu, counts, world_size, channels, invstd, gamma, *out)
    return out


def run_batch_norm(device, layout: str, mode: Mode, r: Request, profile: LaunchProfile | None = None) -> Outputs:
    """One mode on `device` (EmulatedDevice or CudaDevice) in PyTorch's functional semantics, NumPy in and out."""
    ndim = r.x.ndim
    expected_axis = 1 if layout == "NCHW" else ndim - 1
    if r.axis % max(ndim, 1) != expected_axis:
        raise ValueError(f"the {layout} kernel takes the channel axis {expected_axis} of a rank-{ndim} input, "
                         f"got axis {r.axis}")
    training = mode in TRAINING
    if not training and (r.running_mean is None or r.running_var is None):
        raise ValueError("eval modes need running_mean and running_var (PyTorch: 'running_mean must be defined "
                         "in evaluation mode')")
    backward = mode in (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
    if backward and r.dy is None:
        raise ValueError(f"{mode.value} needs dy")
    n, c, s = view_dims(r.x.shape, layout)
    if training and n * s < 2:
        raise ValueError(f"training needs more than one value per channel, got input shape {r.x.shape}")
    if training and r.momentum is not None and not 0.0 <= r.momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (the new batch's weight), got {r.momentum}")
    if n * s == 0:  # an empty eval batch: nothing to launch; empty y or dx, empty sums for dgamma and dbeta
        empty = Outputs(y=None if backward else np.zeros(r.x.shape), dx=np.zeros(r.x.shape) if backward else None)
        if backward and r.gamma is not None:
            empty.dgamma, empty.dbeta = np.zeros(c), np.zeros(c)
        return empty

    on_device = lambda a: device.asarray(to_storage(a, r.dtype))  # noqa: E731
    k = BatchNormLaunches(device, layout, r.dtype, on_device(r.x), device.asarray(_params(r.gamma, c, 1.0)),
                          device.asarray(_params(r.beta, c, 0.0)), on_device(r.dy) if backward else None, profile)
    out = Outputs()
    if training:
        tracked = r.running_mean is not None
        running = [device.asarray(_params(a, c, 0.0)) for a in (r.running_mean, r.running_var)] if tracked else [None] * 2
        k.batch_statistics(r.eps, 0.0 if r.momentum is None else r.momentum, *running)
        if mode is Mode.TRAIN_FORWARD:
            out.saved_mean, out.saved_invstd = device.numpy(k.mean), device.numpy(k.invstd)
            if tracked:
                out.running_mean, out.running_var = (device.numpy(a) for a in running)
    else:
        running = [device.asarray(_params(r.running_mean, c, 0.0)), device.asarray(_params(r.running_var, c, 1.0))]
        k.running_statistics(r.eps, *running)
    if not backward:
        k.normalize()
        out.y = from_storage(device.numpy(k.out), r.dtype)
        if not training:  # the buffers the eval kernels read, as they are after the call: to be unchanged
            out.running_mean, out.running_var = (device.numpy(a) for a in running)
        return out
    k.gradients(train=training)
    out.dx = from_storage(device.numpy(k.out), r.dtype)
    if r.gamma is not None:
        out.dgamma, out.dbeta = device.numpy(k.dgamma), device.numpy(k.dbeta)
    if not training:
        out.running_mean, out.running_var = (device.numpy(a) for a in running)
    return out


# ------------------------------------------------------------------------------------ the backends
class CudaKernelBatchNorm:
    """bnconf's CUDA kernel for one layout (NCHW: channel axis 1; NHWC: channel axis last)."""

    convention = TORCH_FUNCTIONAL
    modes = frozenset(Mode)
    dtypes = ("float32", "float16", "bfloat16")
    devices = ("cuda", "cpu-emulated")

    def __init__(self, layout: str):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.name = f"bnconf.cuda_kernel[{layout}]"
        self.channel_axes = (1,) if layout == "NCHW" else (-1,)
        self.ranks = TORCH_FUNCTIONAL.ranks

    def precision(self, dtype: str, device: str) -> Precision:
        """float32 arithmetic and accumulators, float32 statistics and parameters, Welford/Chan variance."""
        return precision_for(dtype, compute="float32", accumulate="float32", stats="float32",
                             variance=VarianceAlgorithm.WELFORD)

    def unavailable(self, device: str) -> str | None:
        if device == "cpu-emulated":
            from . import cuda_build

            return None if cuda_build.gxx_available() else "no C++ compiler (g++) to build the CPU emulation"
        try:
            import cupy
        except ImportError:
            return "cupy is not installed (pip install cupy-cuda13x on a machine with a GPU)"
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "no CUDA device on this machine"
        except Exception as e:  # CUDARuntimeError without a driver
            return f"no usable CUDA device: {e}"
        return None

    def versions(self) -> dict[str, str]:
        found = {"kernel": KERNEL_SOURCE.name}
        try:
            import cupy

            found["cupy"] = cupy.__version__
        except ImportError:
            pass
        return found

    def run(self, mode: Mode, r: Request) -> Outputs:
        if r.device not in PROFILES:
            raise ValueError(f"{self.name} runs on {' or '.join(self.devices)}, not {r.device!r}")
        device = EmulatedDevice() if r.device == "cpu-emulated" else CudaDevice()
        return run_batch_norm(device, self.layout, mode, r)


BACKENDS = [CudaKernelBatchNorm("NCHW"), CudaKernelBatchNorm("NHWC")]
