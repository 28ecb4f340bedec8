"""bnconf's own CUDA kernel as a synchronized batch norm across W replicas (record CUDA_KERNEL_SYNC).

What W devices would do, emulated in one process: every replica r runs its shard x_r through the kernel's
own reduction and exports its per-channel partial statistics (n_r, mean_r, M2_r) in float32
(bnconf_partial_stats_*); the W partials, stacked (W, C) as an all-gather leaves them on every device, are
merged count-weighted by Chan's pairwise update in replica order (bnconf_merge_stats; an empty replica,
n_r = 0, is the identity):

    N = sum n_r,   mean = Chan-merged mean,   var = M2 / N (biased: normalization),
    running_mean = (1 - m) running_mean + m mean,   running_var = (1 - m) running_var + m M2 / (N - 1)

(PyTorch's functional convention, TORCH_FUNCTIONAL: momentum m weights the new batch, the running variance
averages the unbiased global variance). Each replica normalizes its shard with the global statistics by the
kernel's own elementwise pass (bnconf_apply_*). Backward: each replica reduces sum(dy_r) and
sum(dy_r (x_r - mean)) over its shard (bnconf_bwd_partial_*), these are summed over replicas with the counts
(the all-reduce, bnconf_bwd_merge) into

    dbeta = sum dy,   dgamma = invstd sum dy (x - mean),
    dx_r = gamma invstd (dy_r - sum dy / N) - gamma invstd^3 (sum dy (x - mean) / N) (x_r - mean)

with the global count N (count-weighted), and each replica's dx comes from the kernel's elementwise dx pass
on its shard (bnconf_dx_*). Shards may differ in size or be empty (an empty replica returns empty y and dx).
Precision: the kernel's (float32 arithmetic, statistics and accumulators; Welford/Chan variance).

Devices: "cpu-emulated" (g++ and adapters/cuda/cuda_on_cpu.h) and "cuda" (CuPy), as the single-device kernel
(adapters/cuda_kernel.py). Nothing is compiled or imported at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec import Precision
from ..spec.conventions import TORCH_FUNCTIONAL
from ..spec.replica_conventions import CUDA_KERNEL_SYNC
from .cuda_kernel import (
    DTYPE_CODES,
    PROFILES,
    BatchNormLaunches,
    CudaDevice,
    CudaKernelBatchNorm,
    EmulatedDevice,
    LaunchProfile,
    MergedStatistics,
    from_storage,
    merge_gradient_sums,
    merge_statistics,
    to_storage,
    view_dims,
)
from .replica_protocol import ShardedOutputs, ShardedRequest, check_replica_request

_SINGLE = CudaKernelBatchNorm("NCHW")  # the single-device kernel: its precision and availability are this one's


def layout_of(shape: tuple[int, ...], axis: int) -> str:
    """NCHW for channel axis 1 (rank 2 included), NHWC for the last axis; other axes are refused."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"batch norm needs shards of rank >= 2 (batch, channels, ...), got shape {shape}")
    a = axis % ndim
    if a == 1:
        return "NCHW"
    if a == ndim - 1:
        return "NHWC"
    raise ValueError(f"the kernel takes the channel axis 1 (NCHW) or the last one (NHWC), got axis {axis} of a "
                     f"rank-{ndim} input")


def _params(a, c: int, fill: float) -> np.ndarray:
    return np.full(c, fill, dtype=np.float32) if a is None else np.ascontiguousarray(a, dtype=np.float32)


@dataclass
class _Forward:
    """The device state after the synchronized forward: per replica its launches (None for an empty shard),
    the stacked partials, the merged statistics, and the running statistics (None when not tracked)."""

    replicas: list
    counts: object
    merged: MergedStatistics
    running: tuple | None
    channels: int


def _check(r: ShardedRequest, layout: str) -> tuple[int, int]:
    """(channels, global count N per channel); ValueError where the kernel (PyTorch's functional rule) refuses."""
    if r.dtype not in DTYPE_CODES:
        raise ValueError(f"dtype {r.dtype!r} not supported: one of {', '.join(DTYPE_CODES)}")
    inner = r.shards[0].shape[1:]
    if any(x.shape[1:] != inner for x in r.shards):
        raise ValueError(f"shards must differ only in their batch length, got shapes {[x.shape for x in r.shards]}")
    if r.dys is not None and [d.shape for d in r.dys] != [x.shape for x in r.shards]:
        raise ValueError(f"dy shards have shapes {[d.shape for d in r.dys]}, expected {[x.shape for x in r.shards]}")
    c = view_dims(r.shards[0].shape, layout)[1]
    total = sum(n * s for n, _, s in (view_dims(x.shape, layout) for x in r.shards))
    if total < 2:
        raise ValueError(f"training needs more than one value per channel over all replicas, got {total} "
                         f"(shards of {list(r.rows)} rows)")
    if r.momentum is not None and not 0.0 <= r.momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (the new batch's weight), got {r.momentum}")
    if (r.running_mean is None) != (r.running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    return c, total


def _forward(device, layout: str, r: ShardedRequest, profile: LaunchProfile | None) -> _Forward:
    """Partial statistics of every replica's shard, their merge, running update (see the module docstring)."""
    c, _ = _check(r, layout)
    w = r.world_size
    gamma, beta = device.asarray(_params(r.gamma, c, 1.0)), device.asarray(_params(r.beta, c, 0.0))
    counts, means, m2s = device.zeros(w * c, np.int32), device.zeros(w * c, np.float32), device.zeros(w * c, np.float32)
    replicas = []
    for i, x in enumerate(r.shards):
        n, _, s = view_dims(x.shape, layout)
        if n * s == 0:  # an empty shard: the zero partial (count 0), the identity of the merge
            replicas.append(None)
            continue
        dy = None if r.dys is None else device.asarray(to_storage(r.dys[i], r.dtype))
        k = BatchNormLaunches(device, layout, r.dtype, device.asarray(to_storage(x, r.dtype)), gamma, beta, dy, profile)
        rows = slice(i * c, (i + 1) * c)
        k.partial_statistics(counts[rows], means[rows], m2s[rows])
        replicas.append(k)
    running = None
    if r.running_mean is not None:
        running = (device.asarray(_params(r.running_mean, c, 0.0)), device.asarray(_params(r.running_var, c, 1.0)))
    momentum = 0.0 if r.momentum is None else r.momentum
    merged = merge_statistics(device, counts, means, m2s, w, c, gamma, r.eps, momentum,
                              *(running or (None, None)), profile=profile)
    return _Forward(replicas, counts, merged, running, c)


def merged_statistics(device, layout: str, r: ShardedRequest, profile: LaunchProfile | None = None) -> dict:
    """The merged statistics of a step's forward, float32 NumPy arrays: mean, var (biased), invstd, and with
    running statistics in `r` the updated running_mean and running_var."""
    f = _forward(device, layout, r, profile)
    out = {q: device.numpy(getattr(f.merged, q)) for q in ("mean", "var", "invstd")}
    if f.running is not None:
        out["running_mean"], out["running_var"] = (device.numpy(a) for a in f.running)
    return out


def run_synchronized_step(device, layout: str, r: ShardedRequest, profile: LaunchProfile | None = None) -> ShardedOutputs:
    """One training step (forward, and backward when r.dys is given) of synchronized batch norm over the
    request's W shards, each replica's kernels launched on its own shard; NumPy in and out."""
    f = _forward(device, layout, r, profile)
    empty = [np.zeros(x.shape) for x in r.shards]
    ys = []
    for k, nothing in zip(f.replicas, empty):
        if k is None:
            ys.append(nothing)
            continue
        k.mean, k.invstd, k.scale = f.merged.mean, f.merged.invstd, f.merged.scale
        k.normalize()
        ys.append(from_storage(device.numpy(k.out), r.dtype))
    out = ShardedOutputs(y=tuple(ys))
    if f.running is not None:
        mean, var = (device.numpy(a) for a in f.running)
        out.running_mean, out.running_var = (tuple(a.copy() for _ in r.shards) for a in (mean, var))
    if r.dys is None:
        return out
    c, w = f.channels, r.world_size
    sum_dy, sum_dyxmu = device.zeros(w * c, np.float32), device.zeros(w * c, np.float32)
    for i, k in enumerate(f.replicas):
        if k is not None:
            rows = slice(i * c, (i + 1) * c)
            k.gradient_sums(f.merged.mean, sum_dy[rows], sum_dyxmu[rows])
    gamma = device.asarray(_params(r.gamma, c, 1.0))
    dgamma, dbeta, coef_a, coef_b, coef_k = merge_gradient_sums(device, sum_dy, sum_dyxmu, f.counts, w, c,
                                                                f.merged.invstd, gamma, profile=profile)
    dxs = []
    for k, nothing in zip(f.replicas, empty):
        if k is None:
            dxs.append(nothing)
            continue
        k.coef_a, k.coef_b, k.coef_k = coef_a, coef_b, coef_k
        k.training_input_gradient()
        dxs.append(from_storage(device.numpy(k.out), r.dtype))
    out.dx = tuple(dxs)
    if r.gamma is not None:
        out.dgamma, out.dbeta = device.numpy(dgamma), device.numpy(dbeta)
    return out


class CudaKernelSyncBatchNorm:
    """bnconf's CUDA kernel over W emulated replicas: partial statistics, count-weighted merge, normalize."""

    name = CUDA_KERNEL_SYNC.name  # "bnconf.cuda_kernel[partial statistics]"
    convention = TORCH_FUNCTIONAL
    replica = CUDA_KERNEL_SYNC
    dtypes = _SINGLE.dtypes
    devices = ("cpu-emulated", "cuda")
    world_sizes = (1, 2, 3, 4)

    def precision(self, dtype: str, device: str) -> Precision:
        """The kernel's: float32 arithmetic, accumulators, statistics and parameters; Welford/Chan variance."""
        return _SINGLE.precision(dtype, device)

    def unavailable(self, device: str) -> str | None:
        """Why `device` cannot run now (no g++ for cpu-emulated; no CuPy or GPU for cuda), else None."""
        if device not in self.devices:
            return f"{self.name} runs on 'cpu-emulated' (the kernel on the CPU emulation) or 'cuda', not {device!r}"
        return _SINGLE.unavailable(device)

    def versions(self) -> dict[str, str]:
        return _SINGLE.versions()

    def close(self) -> None:
        """Nothing to stop: the replicas run in this process."""

    def step(self, r: ShardedRequest) -> ShardedOutputs:
        check_replica_request(self, r)
        if r.device not in PROFILES:
            raise ValueError(f"{self.name} runs on {' or '.join(self.devices)}, not {r.device!r}")
        device = EmulatedDevice() if r.device == "cpu-emulated" else CudaDevice()
        return run_synchronized_step(device, layout_of(r.shards[0].shape, r.axis), r)


BACKEND = CudaKernelSyncBatchNorm()
BACKENDS = [BACKEND]
