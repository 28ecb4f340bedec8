"""Flax linen, Flax nnx, Haiku and Equinox batch norm across replicas: the parent side (no JAX import here).

Each backend's step runs in one persistent worker process shared by all four (`ReplicaGroup` of one process,
`jax_replica_worker.serve`), started with XLA_FLAGS=--xla_force_host_platform_device_count=4 so JAX there
sees 4 host CPU devices; W replicas are the first W devices of a `jax.shard_map` mesh. The layer runs with its
cross-replica axis (`axis_name` / `cross_replica_axis`) set to the mesh axis, so its statistics are pmean'd
over replicas: synchronized semantics with an equal-weight combine (each replica's mean weighs 1/W).

Shards of different sizes: Flax (linen and nnx) take a `mask`, so the worker pads every shard to the largest
and masks the padding. Flax's `_compute_stats` then averages the per-replica *masked means* with `lax.pmean`
(flax 0.12.8 flax/linen/normalization.py:119-135 `maybe_distributed_mean`, :122 `mus = tuple(x.mean(axes,
where=mask) for x in xs)`, :128 `lax.pmean(jnp.stack(mus, axis=0), axis_name, ...)`; nnx: flax/nnx/nn/
normalization.py:101-115), which weighs replicas equally whatever their counts: with unequal shards the
statistics are not the global batch's, and the gradient (autodiff of that forward) weighs replica r's rows
1/(W n_r) instead of 1/N, so dx differs even where the replicas' statistics happen to agree. An empty
(all-masked) shard's mean is 0/0 = NaN, which the pmean spreads to every replica. The backends return what
Flax computes; the difference from the synchronized oracle is the record's EQUAL_WEIGHT_MOMENTS combine (a
known discrepancy; tests/adapters/test_jax_replicas.py checks the equal-weight values). Haiku and Equinox have no mask
(`hk.BatchNorm.__call__(inputs, is_training, test_local_stats, scale, offset)`, `eqx.nn.BatchNorm.__call__(x,
state, *, key, inference)`), and a shard_map block has one shape on every device, so unequal or empty shards
are refused by `check_replica_request` with the record's reason.

Precision declarations match the single-device adapters (jax_flax.py, jax_haiku.py, jax_equinox.py):
Flax statistics in float32 (float64 for float64) with its default one-pass fast variance, Haiku and
Equinox everything in the input's dtype; subnormals flushed on CPU (XLA's FTZ/DAZ).
"""

import importlib.metadata
import importlib.util
import time

from ..spec import InputError, Precision, VarianceAlgorithm, precision_for
from ..spec.conventions import EQUINOX_BATCHNORM, FLAX_LINEN_BATCHNORM, FLAX_NNX_BATCHNORM, HAIKU_BATCHNORM
from ..spec.replica_conventions import EQUINOX_SYNC, FLAX_LINEN_SYNC, FLAX_NNX_SYNC, HAIKU_SYNC
from .replica_group import ReplicaGroup
from .replica_protocol import ShardedOutputs, ShardedRequest, check_replica_request

WORKER = "bnconf.adapters.jax_replica_worker:serve"
HOST_DEVICES = 4
WORKER_ENV = {
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={HOST_DEVICES}",
    "JAX_PLATFORMS": "cpu",  # the replicas are host CPU devices, GPU or not
    "TF_CPP_MIN_LOG_LEVEL": "3",
}
CALL_TIMEOUT = 60.0
STARTUP_TIMEOUT = 240.0


class _SharedGroup:
    """The one worker process every JAX replica backend uses (started on the first step, reused after)."""

    group: ReplicaGroup | None = None

    @classmethod
    def get(cls) -> ReplicaGroup:
        if cls.group is None:
            cls.group = ReplicaGroup(WORKER, processes=1, env=WORKER_ENV, timeout=CALL_TIMEOUT,
                                     startup_timeout=STARTUP_TIMEOUT, label="JAX replicas (shard_map)")
        return cls.group

    @classmethod
    def close(cls) -> None:
        if cls.group is not None:
            cls.group.close()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class JaxReplicaBackend:
    """One library's batch norm under shard_map; subclasses name the library and declare precision."""

    library: str  # the worker's key: "linen", "nnx", "haiku", "equinox"
    module: str  # the importable module: "flax", "haiku", "equinox"
    dist: str  # its distribution name for versions()
    # float16/bfloat16 run too (precision declared below, as the single-device adapters'); left out of the
    # declared dtypes to keep the distributed battery's compilations few
    dtypes = ("float32", "float64")
    devices = ("cpu",)
    world_sizes = (1, 2, 3, 4)
    channel_axes = (-1, 1)

    def __init__(self):
        self.name = self.replica.name
        self.ranks = self.convention.ranks
        self.last_step: dict = {}  # the worker's report on the latest step: compiled?, seconds, wall seconds

    def unavailable(self, device: str) -> str | None:
        if device not in self.devices:
            return f"{self.name} runs its replicas on host CPU devices only"
        for module, dist in (("jax", "jax"), (self.module, self.dist)):
            if importlib.util.find_spec(module) is None:
                return f"{dist} is not installed (pip install 'bnconf[jax]')"
        return None

    def versions(self) -> dict[str, str]:
        return {d: v for d in ("jax", "jaxlib", self.dist) if (v := _version(d)) is not None}

    def close(self) -> None:
        _SharedGroup.close()

    def step(self, request: ShardedRequest) -> ShardedOutputs:
        check_replica_request(self, request)
        ndim = request.shards[0].ndim
        if request.axis % ndim not in {a % ndim for a in self.channel_axes}:
            raise InputError(f"{self.name}: channel axis {request.axis} is not supported "
                             f"(supported: {', '.join(map(str, self.channel_axes))})")
        if ndim not in self.ranks:
            raise InputError(f"{self.name}: rank {ndim} is not supported (ranks {self.ranks})")
        payload = {
            "library": self.library, "dtype": request.dtype, "axis": request.axis, "eps": request.eps,
            "momentum": request.momentum, "shards": list(request.shards),
            "dys": None if request.dys is None else list(request.dys),
            "gamma": request.gamma, "beta": request.beta, "running_mean": request.running_mean,
            "running_var": request.running_var, "batches_seen": request.batches_seen,
        }
        started = time.perf_counter()
        out = _SharedGroup.get().call([payload])[0]
        self.last_step = {**out.pop("_info"), "wall_seconds": time.perf_counter() - started,
                          **{k: out.pop(k) for k in ("dgamma_spread", "dbeta_spread") if k in out}}
        world = request.world_size
        tracked = request.running_mean is not None
        return ShardedOutputs(
            y=tuple(out["y"]),
            dx=tuple(out["dx"]) if "dx" in out else None,
            running_mean=tuple(out["running_mean"][r] for r in range(world)) if tracked else None,
            running_var=tuple(out["running_var"][r] for r in range(world)) if tracked else None,
            dgamma=out.get("dgamma"),
            dbeta=out.get("dbeta"),
        )


class FlaxLinenReplicas(JaxReplicaBackend):
    """flax.linen.BatchNorm(axis_name="replica"), unequal shards by mask."""

    library, module, dist = "linen", "flax", "flax"
    convention, replica = FLAX_LINEN_BATCHNORM, FLAX_LINEN_SYNC

    def precision(self, dtype: str, device: str) -> Precision:
        """Statistics in float32 (float64 for float64), fast one-pass variance (the layer's default)."""
        return precision_for(dtype, flush_subnormals=device == "cpu", variance=VarianceAlgorithm.ONE_PASS)


class FlaxNnxReplicas(FlaxLinenReplicas):
    """flax.nnx.BatchNorm(axis_name="replica"), unequal shards by mask."""

    library = "nnx"
    convention, replica = FLAX_NNX_BATCHNORM, FLAX_NNX_SYNC

    def precision(self, dtype: str, device: str) -> Precision:
        """As linen, but a half `dtype` normalizes in that dtype (nnx promotes x, statistics and parameters to
        `dtype` first); the batch statistics still sum in float32."""
        if dtype in ("float16", "bfloat16"):
            return precision_for(dtype, compute=dtype, accumulate="float32", stats="float32",
                                 flush_subnormals=device == "cpu", variance=VarianceAlgorithm.ONE_PASS)
        return super().precision(dtype, device)


class HaikuReplicas(JaxReplicaBackend):
    """hk.BatchNorm(cross_replica_axis="replica"); no mask, so equal shards only."""

    library, module, dist = "haiku", "haiku", "dm-haiku"
    convention, replica = HAIKU_BATCHNORM, HAIKU_SYNC

    def precision(self, dtype: str, device: str) -> Precision:
        """Everything in the input's dtype, one-pass variance E[x^2] - E[x]^2 (pmean'd moments); jnp.mean sums
        half inputs in float32."""
        half = dtype in ("float16", "bfloat16")
        return precision_for(dtype, compute=dtype, accumulate="float32" if half else None, stats=dtype,
                             flush_subnormals=device == "cpu", variance=VarianceAlgorithm.ONE_PASS)


class EquinoxReplicas(JaxReplicaBackend):
    """eqx.nn.BatchNorm(axis_name=("batch", "replica"), mode="batch"); no mask, so equal shards only."""

    library, module, dist = "equinox", "equinox", "equinox"
    convention, replica = EQUINOX_BATCHNORM, EQUINOX_SYNC
    channel_axes = (1,)

    def precision(self, dtype: str, device: str) -> Precision:
        """Everything in the input's dtype; the centered second moment about the pmean'd mean (two-pass)."""
        return precision_for(dtype, compute=dtype, stats=dtype, flush_subnormals=device == "cpu")


BACKENDS = [FlaxLinenReplicas(), FlaxNnxReplicas(), HaikuReplicas(), EquinoxReplicas()]


def close() -> None:
    """Stop the shared worker process."""
    _SharedGroup.close()
