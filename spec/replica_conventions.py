"""Every data-parallel batch-norm API's behaviour across replicas, written down as data.

Each `ReplicaConvention` names the single-device `Convention` its replicas follow (`single`), whether
they normalize with synchronized or per-replica statistics, how statistics are combined, what running
statistics each replica holds after a step, and why an unequal or empty split cannot be expressed (None:
it can). Sources: `../shared/bn-semantics.md` and the framework files each record names.
"""

from dataclasses import replace

from .conventions import (
    CONVENTIONS,
    TORCH_BATCHNORM1D,
    Convention,
    Variance,
)
from .replicas import Combine, ReplicaConvention, RunningPolicy, Semantics

NO_MASK = ("{api} has no mask argument: under pmap/shard_map every replica's shard has the same shape, so "
           "shards of different sizes (or an empty one) cannot be expressed")

# detectron2's NaiveSyncBatchNorm (and the pattern many codebases carry): all-reduce the per-replica sums,
# normalize with the global biased variance, and keep the *biased* variance in the running average
TORCH_NAIVE_SYNC_SINGLE = replace(
    TORCH_BATCHNORM1D,
    name="naive SyncBN (torch.distributed all_reduce)",
    api="all_reduce of [sum(x), sum(x**2), count] in a torch.autograd.Function, then F.batch_norm-style normalization",
    source="facebookresearch/detectron2: detectron2/layers/batch_norm.py::NaiveSyncBatchNorm.forward (stats_mode='N')",
    source_url="https://github.com/facebookresearch/detectron2/blob/main/detectron2/layers/batch_norm.py",
    ranks=(2, 3, 4, 5),
    running_var=Variance.BIASED,
    cumulative_average=False,
    untracked_eval_uses_batch_stats=False,
    notes="running_var averages the biased global variance (self.running_var += momentum * (var - running_var)), "
          "unlike torch.nn.SyncBatchNorm, which keeps the Bessel-corrected one (pytorch/pytorch#40600).",
)

TORCH_DDP = ReplicaConvention(
    name="torch DDP(BatchNorm)",
    api="torch.nn.parallel.DistributedDataParallel around torch.nn.BatchNorm1d/2d (gloo)",
    source="pytorch/pytorch v2.13.0: torch/nn/parallel/distributed.py::_sync_buffers (broadcast_buffers=True)",
    semantics=Semantics.PER_REPLICA,
    combine=None,
    running=RunningPolicy.BROADCAST_RANK0,
    notes="each rank normalizes with its own shard's statistics; buffers (running statistics) are broadcast "
          "from rank 0 at the start of the next forward, so after a step every replica holds rank 0's.",
)

TORCH_NAIVE_SYNC = ReplicaConvention(
    name="naive SyncBN",
    api=TORCH_NAIVE_SYNC_SINGLE.api,
    source=TORCH_NAIVE_SYNC_SINGLE.source,
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.SUMS,
    running=RunningPolicy.GLOBAL,
    notes="count-weighted: each replica contributes n_r * [E[x], E[x**2], 1] (detectron2 all-reduces B * [mean, meansqr, 1]); "
          "var = E[x**2] - E[x]**2; at world size 1 detectron2 falls back to plain BatchNorm (unbiased running variance).",
)

TORCH_SYNC_BATCHNORM = ReplicaConvention(
    name="torch.nn.SyncBatchNorm",
    api="torch.nn.SyncBatchNorm (CUDA/XPU only)",
    source="pytorch/pytorch v2.13.0: torch/nn/modules/_functions.py::SyncBatchNorm.forward; "
           "aten/src/ATen/native/cuda/Normalization.cuh::batch_norm_reduce_statistics_kernel",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.INVSTD_REBUILT,
    running=RunningPolicy.GLOBAL,
    notes="per-rank (mean, invstd) and counts all-gathered; var rebuilt as invstd**-2 - eps then merged "
          "count-weighted; running_var uses the global count's Bessel correction.",
)

KERAS_SYNC = ReplicaConvention(
    name="keras.layers.BatchNormalization(synchronized=True)",
    api="keras.layers.BatchNormalization(synchronized=True) under tf.distribute.MirroredStrategy (TensorFlow backend)",
    source="keras-team/keras v3.15.1: keras/src/backend/tensorflow/nn.py::_compute_moments_sync",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.SUMS,
    running=RunningPolicy.GLOBAL,
    notes="all-reduces sum(x), sum(x**2) and the local batch size; variance = max(E[x**2] - E[x]**2, 0).",
)

TF_KERAS_SYNC = replace(
    KERAS_SYNC,
    name="tf_keras.layers.BatchNormalization(synchronized=True)",
    api="tf_keras.layers.BatchNormalization(synchronized=True) under tf.distribute.MirroredStrategy",
    source="keras-team/tf-keras: tf_keras/layers/normalization/batch_normalization.py::_sync_calculate_mean_and_var",
    notes="all-reduces sum(x), sum(x**2) and the local batch size; variance = max(E[x**2] - E[x]**2, 0) "
          "(tf_keras 2.21 batch_normalization.py:1206); synchronized=True forces the non-fused path (:205-207).",
)

FLAX_LINEN_SYNC = ReplicaConvention(
    name="flax.linen.BatchNorm(axis_name)",
    api="flax.linen.BatchNorm(axis_name=...) under shard_map over host CPU devices; unequal shards by mask",
    source="google/flax v0.12.8: flax/linen/normalization.py::_compute_stats (maybe_distributed_mean: lax.pmean "
           "of the per-replica masked means of x and x**2)",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.EQUAL_WEIGHT_MOMENTS,
    running=RunningPolicy.GLOBAL,
    notes="use_fast_variance=True (default): var = max(0, pmean(E[x**2]) - pmean(E[x])**2); pmean weighs every "
          "replica 1/W whatever its masked count.",
)

FLAX_NNX_SYNC = replace(
    FLAX_LINEN_SYNC,
    name="flax.nnx.BatchNorm(axis_name)",
    api="flax.nnx.BatchNorm(axis_name=...) under shard_map over host CPU devices; unequal shards by mask",
    source="google/flax v0.12.8: flax/nnx/nn/normalization.py::_compute_stats",
)

HAIKU_SYNC = ReplicaConvention(
    name="haiku.BatchNorm(cross_replica_axis)",
    api="hk.BatchNorm(cross_replica_axis=...) under shard_map over host CPU devices",
    source="google-deepmind/dm-haiku: haiku/_src/batch_norm.py::BatchNorm.__call__ (jax.lax.pmean of mean and "
           "mean of squares)",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.EQUAL_WEIGHT_MOMENTS,
    running=RunningPolicy.GLOBAL,
    unequal_shards=NO_MASK.format(api="hk.BatchNorm"),
    empty_shard=NO_MASK.format(api="hk.BatchNorm"),
)

EQUINOX_SYNC = ReplicaConvention(
    name="equinox.nn.BatchNorm(axis_name)",
    api="eqx.nn.BatchNorm(axis_name=(batch, replica)) vmapped over the batch under shard_map",
    source="patrick-kidger/equinox: equinox/nn/_batch_norm.py::BatchNorm.__call__ (lax.pmean of mean, then of "
           "the centered second moment)",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.EQUAL_WEIGHT_CENTERED,
    running=RunningPolicy.GLOBAL,
    unequal_shards=NO_MASK.format(api="eqx.nn.BatchNorm"),
    empty_shard=NO_MASK.format(api="eqx.nn.BatchNorm"),
)

CUDA_KERNEL_SYNC = ReplicaConvention(
    name="bnconf.cuda_kernel[partial statistics]",
    api="bnconf's CUDA kernel: per-replica (count, mean, M2) exported, merged count-weighted, then normalized",
    source="bnconf: adapters/cuda/batchnorm.cu (partial statistics and merge)",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.CHAN_MERGE,
    running=RunningPolicy.GLOBAL,
)

NUMPY_SYNC = ReplicaConvention(
    name="example synchronized batch norm (NumPy)",
    api="bnconf.adapters.example_replicas: simulated replicas, Chan merge of per-replica statistics",
    source="bnconf: adapters/example_replicas.py",
    semantics=Semantics.SYNCHRONIZED,
    combine=Combine.CHAN_MERGE,
    running=RunningPolicy.GLOBAL,
)

REPLICA_CONVENTIONS: dict[str, ReplicaConvention] = {
    r.name: r for r in (TORCH_DDP, TORCH_NAIVE_SYNC, TORCH_SYNC_BATCHNORM, KERAS_SYNC, TF_KERAS_SYNC,
                        FLAX_LINEN_SYNC, FLAX_NNX_SYNC, HAIKU_SYNC, EQUINOX_SYNC, CUDA_KERNEL_SYNC, NUMPY_SYNC)
}

# the single-device records the replica backends declare besides those in spec.CONVENTIONS
SINGLE_DEVICE: dict[str, Convention] = {c.name: c for c in (TORCH_NAIVE_SYNC_SINGLE,)}


def single_device(name: str) -> Convention:
    """A single-device record by name: spec.CONVENTIONS or the replica-only ones above."""
    return CONVENTIONS.get(name) or SINGLE_DEVICE[name]
