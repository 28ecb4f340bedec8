"""PyTorch batch norm across replicas: the parent side (no torch import here).

Every step runs in four persistent worker processes (one `ReplicaGroup`, `torch_replica_worker.serve`),
ranks 0..3 of one gloo process group on CPU; a W-replica step uses the subgroup of ranks [0, W), built once
per process, and the other ranks idle. Three backends share the group:

  "torch DDP(BatchNorm1d)"   DistributedDataParallel around a plain torch.nn.BatchNorm1d: per-replica
                             statistics, running statistics broadcast from rank 0 (TORCH_DDP). The returned
                             running statistics are each replica's after that broadcast (the one the next
                             forward performs); dgamma/dbeta are W times DDP's averaged gradient.
  "naive SyncBN"             the all-reduce pattern detection codebases carry (detectron2 NaiveSyncBatchNorm,
                             stats_mode="N"), reimplemented in the worker: all-reduced B * [E[x], E[x**2], 1],
                             one-pass biased variance kept in the running average (TORCH_NAIVE_SYNC); with one
                             replica it is plain batch norm, as detectron2 falls back to BatchNorm2d.forward.
  "torch.nn.SyncBatchNorm"   torch's own, CUDA/XPU only (TORCH_SYNC_BATCHNORM): the ranks share cuda:0 over
                             gloo with CUDA tensors (NCCL refuses two ranks on one GPU); skipped without CUDA.

dgamma/dbeta are the gradient of the sum of the replicas' losses sum_r sum(y_r * dy_r): for DDP, W times the
averaged gradient DDP leaves in weight.grad (the product taken here in float64 is exact; DDP's own scaling
of each replica's gradient by 1/W rounds for W = 3); for the other two, the replicas' local gradients summed
here in float64.

Unequal and empty shards: gloo takes them, and so do all three. An empty shard under DDP: plain batch norm
on an empty training batch returns an empty y and leaves that replica's running statistics unchanged
(ATen's batch_norm returns early for numel() == 0), and its parameter gradients are zero.
"""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np

from ..spec import InputError, Precision, VarianceAlgorithm, precision_for
from ..spec.conventions import TORCH_BATCHNORM1D
from ..spec.replica_conventions import TORCH_DDP, TORCH_NAIVE_SYNC, TORCH_NAIVE_SYNC_SINGLE, TORCH_SYNC_BATCHNORM
from .replica_group import ReplicaGroup
from .replica_protocol import ShardedOutputs, ShardedRequest, check_replica_request

WORKER = "bnconf.adapters.torch_replica_worker:serve"
PROCESSES = 4
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
CALL_TIMEOUT = 60.0
STARTUP_TIMEOUT = 180.0
NO_TORCH = "torch is not installed (pip install 'bnconf[torch]')"
NO_GPU = "torch.nn.SyncBatchNorm needs a CUDA/XPU device: it runs only on GPU"


class _SharedGroup:
    """The four worker processes every torch replica backend uses (started on the first step, reused)."""

    group: ReplicaGroup | None = None

    @classmethod
    def get(cls) -> ReplicaGroup:
        if cls.group is None:
            cls.group = ReplicaGroup(WORKER, processes=PROCESSES, env=WORKER_ENV, timeout=CALL_TIMEOUT,
                                     startup_timeout=STARTUP_TIMEOUT, label="torch replicas (gloo)")
        return cls.group

    @classmethod
    def close(cls) -> None:
        if cls.group is not None:
            cls.group.close()


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


_CUDA: dict[str, str | None] = {}


def cuda_unavailable() -> str | None:
    """None when torch sees a CUDA device, else why not; a CPU-only build or no NVIDIA device node is decided
    without running anything, otherwise one short subprocess asks torch (cached)."""
    if "why" not in _CUDA:
        version = _torch_version() or ""
        if importlib.util.find_spec("torch") is None:
            why = NO_TORCH
        elif version.endswith("+cpu"):
            why = f"{NO_GPU} (the installed torch {version} is a CPU-only build)"
        elif not os.path.exists("/dev/nvidiactl"):
            why = f"{NO_GPU} (no CUDA device on this machine)"
        else:
            probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                                   capture_output=True, text=True, timeout=120)
            ok = probe.stdout.strip().endswith("True")
            why = None if ok else f"{NO_GPU} (torch.cuda.is_available() is False)"
        _CUDA["why"] = why
    return _CUDA["why"]


class TorchReplicaBackend:
    """One PyTorch data-parallel batch norm; subclasses name the worker's step and the records."""

    step_kind: str  # the worker's key: "ddp", "naive", "sync"
    dtypes = ("float32", "float64")
    devices = ("cpu",)
    world_sizes = (1, 2, 3, 4)
    known_discrepancies = ()
    averaged_gradients = False  # DDP: weight.grad is the mean over replicas

    def __init__(self):
        self.name = self.replica.name
        self.ranks = self.convention.ranks
        self.last_step: dict = {}  # wall seconds of the latest step

    def unavailable(self, device: str) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return NO_TORCH
        if device not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)} only"
        return None

    def precision(self, dtype: str, device: str) -> Precision:
        """torch's CPU batch norm in the input's dtype (float32 or float64), any summation order."""
        return precision_for(dtype)

    def versions(self) -> dict[str, str]:
        v = _torch_version()
        return {} if v is None else {"torch": v}

    def close(self) -> None:
        _SharedGroup.close()

    def _refuse(self, r: ShardedRequest) -> None:
        """InputError for what the worker could not run the same way on every rank (decided here, before any
        collective: a refusal on one rank alone would leave the others waiting)."""
        ndim = np.ndim(r.shards[0])
        if ndim not in self.ranks:
            raise InputError(f"{self.name}: rank {ndim} is not supported (ranks {self.ranks})")
        if r.axis % ndim != 1:
            raise InputError(f"{self.name}: the channel axis must be 1 (torch batch norm), got {r.axis}")
        if (r.gamma is None) != (r.beta is None):
            raise InputError(f"{self.name}: gamma and beta are given together or not at all")

    def payloads(self, r: ShardedRequest) -> list:
        """One payload per worker process: replica k's for k < W, None (idle) for the others."""
        shared = {"backend": self.step_kind, "world_size": r.world_size, "dtype": r.dtype, "device": r.device,
                  "eps": r.eps, "momentum": r.momentum, "gamma": r.gamma, "beta": r.beta,
                  "running_mean": r.running_mean, "running_var": r.running_var, "batches_seen": r.batches_seen}
        return [{**shared, "x": r.shards[k], "dy": None if r.dys is None else r.dys[k]} if k < r.world_size
                else None for k in range(PROCESSES)]

    def step(self, request: ShardedRequest, fault: dict | None = None) -> ShardedOutputs:
        check_replica_request(self, request)
        self._refuse(request)
        payloads = self.payloads(request)
        if fault is not None:  # honoured by the worker only under BNCONF_TEST_FAULTS=1 (tests)
            payloads = [p if p is None else {**p, "fault": fault} for p in payloads]
        started = time.perf_counter()
        answers = _SharedGroup.get().call(payloads)[:request.world_size]
        self.last_step = {"wall_seconds": time.perf_counter() - started}
        return self._outputs(request, answers)

    def _outputs(self, r: ShardedRequest, answers: list[dict]) -> ShardedOutputs:
        tracked, backward, affine = r.running_mean is not None, r.dys is not None, r.gamma is not None
        per = lambda q: tuple(a[q] for a in answers)  # noqa: E731
        out = ShardedOutputs(y=per("y"), running_mean=per("running_mean") if tracked else None,
                             running_var=per("running_var") if tracked else None,
                             dx=per("dx") if backward else None)
        if backward and affine:
            out.dgamma, out.dbeta = self._parameter_gradient(answers, "dgamma"), self._parameter_gradient(answers, "dbeta")
        return out

    def _parameter_gradient(self, answers: list[dict], q: str) -> np.ndarray:
        if self.averaged_gradients:  # every replica holds the same average after DDP's all-reduce
            return answers[0][q] * len(answers)
        return np.sum([a[q] for a in answers], axis=0)


class DDPBatchNorm(TorchReplicaBackend):
    """DistributedDataParallel(torch.nn.BatchNorm1d): per-replica statistics, rank 0's running statistics
    broadcast; affine parameters required (DDP refuses a module without a parameter that requires a gradient:
    torch/nn/parallel/distributed.py, lines 900-908)."""

    step_kind = "ddp"
    convention, replica = TORCH_BATCHNORM1D, TORCH_DDP
    averaged_gradients = True

    def __init__(self):
        super().__init__()
        self.name = "torch DDP(BatchNorm1d)"

    def _refuse(self, r: ShardedRequest) -> None:
        super()._refuse(r)
        if r.gamma is None:
            raise InputError(f"{self.name}: DistributedDataParallel refuses a module without parameters that "
                             "require a gradient (torch/nn/parallel/distributed.py, DistributedDataParallel."
                             "__init__: 'DistributedDataParallel is not needed when a module doesn't have any "
                             "parameter that requires a gradient'); give gamma and beta")
        single = [k for k, x in enumerate(r.shards) if np.size(x) == np.shape(x)[1]]  # one value per channel
        if single:
            raise InputError(f"{self.name}: a replica holds one value per channel, which plain batch norm "
                             "refuses in training (torch/nn/functional.py, batch_norm -> _verify_batch_size, line "
                             "2853: 'Expected more than 1 value per channel when training'); under DDP the other "
                             "replicas would then wait for it in the gradient all-reduce")


class NaiveSyncBatchNorm(TorchReplicaBackend):
    """The naive SyncBN pattern (detectron2 NaiveSyncBatchNorm, stats_mode="N"), reimplemented in the worker:
    count-weighted all-reduced sums, one-pass variance E[x**2] - E[x]**2, biased running variance."""

    step_kind = "naive"
    convention, replica = TORCH_NAIVE_SYNC_SINGLE, TORCH_NAIVE_SYNC

    def precision(self, dtype: str, device: str) -> Precision:
        """The input's dtype throughout; the one-pass variance of all-reduced sums (the pattern's own)."""
        return precision_for(dtype, variance=VarianceAlgorithm.ONE_PASS)

    def _refuse(self, r: ShardedRequest) -> None:
        super()._refuse(r)
        if r.momentum is None:
            raise InputError(f"{self.name}: the pattern has no cumulative average (momentum None): it multiplies "
                             "self.momentum into the update (detectron2 NaiveSyncBatchNorm.forward)")


class SyncBatchNorm(TorchReplicaBackend):
    """torch.nn.SyncBatchNorm on CUDA: per-rank (mean, invstd, count) all-gathered, var rebuilt from invstd,
    merged count-weighted (torch.batch_norm_gather_stats_with_counts); GPU only."""

    step_kind = "sync"
    convention, replica = TORCH_BATCHNORM1D, TORCH_SYNC_BATCHNORM
    devices = ("cuda",)

    def unavailable(self, device: str) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return NO_TORCH
        if device != "cuda":
            return NO_GPU
        return cuda_unavailable()


BACKENDS = [DDPBatchNorm(), NaiveSyncBatchNorm(), SyncBatchNorm()]


def close() -> None:
    """Stop the shared worker processes."""
    _SharedGroup.close()
