"""Known discrepancies of the replica backends: where a data-parallel API computes something other than the
semantics its replica record declares, recorded with what it does instead and the source line that says so.

A `ReplicaDiscrepancy` covers a backend (name pattern, `*` wildcard), the split patterns and world sizes where
the difference shows, and names the hypothesis of spec/replica_diagnosis.py (`REPLICA_HYPOTHESES`) that
describes the backend's behaviour there: a covered example is judged against `recorded_expected(hypothesis,
...)` as well, and a quantity that fails the declared semantics becomes "known discrepancy" only when it holds
under the recorded behaviour (so a framework release that changes it is caught). A record that covered examples
but was never needed (the declared semantics held) is reported stale. Data only: no framework import.
"""

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..records import matches


DECLARED = "the declared semantics"
"""The recorded behaviour is the declared replica semantics, on inputs the record's `adjust` changes."""

NAN_EVERYWHERE = "NaN in every element"
"""A recorded behaviour beyond spec/replica_diagnosis.py's hypotheses: every element of the covered quantities
is NaN (an empty replica's masked mean is 0/0, and the collective spreads it to every replica)."""


EMPTY_REPLICA_KEEPS_RUNNING = "a replica with an empty shard keeps its running statistics"
"""A recorded behaviour beyond spec/replica_diagnosis.py's hypotheses: synchronized semantics, except that a
replica whose shard is empty does not update its own copy of the running statistics (the others hold the global
update)."""


FIRST_STEP_FROM_HIDDEN_STATE = "the first step's running statistics read as b + R m / (1 - m)"
"""A recorded behaviour beyond spec/replica_diagnosis.py's hypotheses: at batch count 0 the running statistics
after the step are b + R * m / (1 - m) (b the global batch statistic, R the given running statistic, m the
old-weight momentum) instead of the zero-debiased b: Equinox's mode="batch" reads its hidden averages as the
running statistics while its counter is 0 (see the single-device record
jax-equinox-batch-mode-debiases-from-initial-state)."""


BEHAVIOURS = (DECLARED, NAN_EVERYWHERE, EMPTY_REPLICA_KEEPS_RUNNING, FIRST_STEP_FROM_HIDDEN_STATE)
"""The recorded behaviours besides spec.replica_diagnosis's hypotheses (conformance/replica_battery.py
`recorded_values` computes each)."""


@dataclass(frozen=True)
class ReplicaDiscrepancy:
    """A recorded, explained difference between a replica backend and its declared replica semantics."""

    id: str
    backends: str  # backend name, `*` matching any run of characters (brackets are literal)
    quantities: tuple[str, ...]  # those that differ from the declared semantics
    # a hypothesis name of spec.replica_diagnosis, DECLARED, NAN_EVERYWHERE or EMPTY_REPLICA_KEEPS_RUNNING: what the
    # backend computes instead (on the inputs `adjust` gives, e.g. another momentum)
    hypothesis: str
    explanation: str
    evidence: str  # the framework source line (file, function, the code), or a minimal input and its output
    source: str  # URL of that source line
    splits: tuple[str, ...] = ()  # split pattern names (conformance.replica_cases.Split values); empty: any
    world_sizes: tuple[int, ...] = ()  # empty: any
    dtypes: tuple[str, ...] = ()  # empty: any
    batches_seen: tuple[int, ...] = ()  # the running statistics' batch counts it covers; empty: any
    adjust: Callable | None = field(default=None, repr=False, compare=False)  # ShardedInputs -> ShardedInputs

    def covers(self, backend_name: str, split: str, world_size: int, dtype: str, batches_seen: int | None = None) -> bool:
        """Whether the record applies; `batches_seen` None: the example gives no running statistics."""
        return (matches(backend_name, self.backends)
                and (not self.splits or split in self.splits)
                and (not self.world_sizes or world_size in self.world_sizes)
                and (not self.dtypes or dtype in self.dtypes)
                and (not self.batches_seen or batches_seen in self.batches_seen))


FLAX_SOURCE = "https://github.com/google/flax/blob/v0.12.8/flax/linen/normalization.py#L119-L145"
FLAX_LINES = ("flax 0.12.8 flax/linen/normalization.py::_compute_stats, maybe_distributed_mean (lines 119-135): "
              "`mus = tuple(x.mean(axes, where=mask) for x in xs)` then `lax.pmean(jnp.stack(mus, axis=0), axis_name)`; "
              "flax/nnx/nn/normalization.py::_compute_stats (lines 101-115) is the same code")

def float32_decay(inputs):
    """The inputs with the old-weight momentum whose new-batch weight is float32(1 - momentum): Keras 2's
    `decay = tf.convert_to_tensor(1.0 - momentum)` (a float32 tensor) cast to the float64 variable."""
    return replace(inputs, momentum=1.0 - float(np.float32(1.0 - inputs.momentum)))


TF_KERAS_DECAY = ("tf_keras 2.21.0 tf_keras/src/layers/normalization/batch_normalization.py::_assign_moving_average "
                  "(line 867): `decay = tf.convert_to_tensor(1.0 - momentum, name=\"decay\")`, then `if decay.dtype != "
                  "variable.dtype.base_dtype: decay = tf.cast(decay, variable.dtype.base_dtype)`")
TF_KERAS_SOURCE = ("https://github.com/keras-team/tf-keras/blob/v2.21.0/tf_keras/src/layers/normalization/"
                   "batch_normalization.py#L865-L875")

ENTRIES: tuple[ReplicaDiscrepancy, ...] = (
    ReplicaDiscrepancy(
        id="flax-masked-pmean-weighs-replicas-equally",
        backends="flax.*.BatchNorm(axis_name)",
        quantities=("y", "running_mean", "running_var", "dx", "dgamma"),
        hypothesis="combine weighted as if shards were equal",
        splits=("unequal",),
        explanation=(
            "With `axis_name` and a mask for shards of different sizes, Flax averages each replica's masked mean of "
            "x and of x**2 with lax.pmean: every replica weighs 1/W whatever its count, so the statistics are not "
            "the global batch's (exact only for equal shards); y, the running statistics, dx and dgamma follow."),
        evidence=FLAX_LINES + ". Found by bnconf: flax.linen.BatchNorm(axis_name) on shards of 6 and 2 rows, "
                 "y 1.4e5 x its bound off the synchronized oracle and within 0.07 x under equal weights.",
        source=FLAX_SOURCE,
    ),
    ReplicaDiscrepancy(
        id="flax-empty-shard-nan",
        backends="flax.*.BatchNorm(axis_name)",
        quantities=("y", "running_mean", "running_var", "dx", "dgamma"),
        hypothesis=NAN_EVERYWHERE,
        splits=("empty shard",),
        explanation=(
            "A replica whose shard is empty (every row masked) has a masked mean of 0/0 = NaN; lax.pmean adds it "
            "into every replica's statistics, so y, the running statistics, dx and dgamma are NaN on all replicas."),
        evidence=FLAX_LINES + " (`x.mean(axes, where=mask)` over no element is NaN). Found by bnconf: shards of "
                 "6 and 0 rows give NaN in every element of y, dx and the running statistics.",
        source=FLAX_SOURCE,
    ),
    ReplicaDiscrepancy(
        id="tf-keras-empty-replica-skips-moving-average",
        backends="tf_keras.layers.BatchNormalization[synchronized*",
        quantities=("running_mean", "running_var"),
        hypothesis=EMPTY_REPLICA_KEEPS_RUNNING,
        splits=("empty shard",),
        adjust=float32_decay,  # and the float32 decay of the next record (well within a float32 cell's bound)
        explanation=(
            "Under a distribution strategy with partial-batch handling (MirroredStrategy), tf_keras zeroes the "
            "moving-average update of a replica whose local batch is empty: that replica's copy of moving_mean and "
            "moving_variance stays where it was while the others move toward the global statistics."),
        evidence=("tf_keras 2.21.0 tf_keras/src/layers/normalization/batch_normalization.py::_assign_moving_average "
                  "(lines 865-875): `update_delta = tf.where(inputs_size > 0, update_delta, "
                  "backend.zeros_like(update_delta))`, enabled by `_support_zero_size_input` (line 849: "
                  "strategy.extended.enable_partial_batch_handling). Found by bnconf: shards of 6, 0 and 7 rows leave "
                  "replica 1's running statistics unchanged."),
        source=TF_KERAS_SOURCE,
    ),
    ReplicaDiscrepancy(
        id="tf-keras-float64-float32-decay",
        backends="tf_keras.layers.BatchNormalization[synchronized*",
        quantities=("running_mean", "running_var"),
        hypothesis=DECLARED,
        dtypes=("float64",),
        adjust=float32_decay,
        explanation=(
            "The synchronized layer (always non-fused) forms the moving-average decay as a float32 tensor "
            "1 - momentum and casts it to the float64 variable, so a float64 moving average weighs the batch by "
            "float32(1 - momentum): a relative error up to 6e-8, far above float64 rounding (the single-device "
            "record tf-v1-layers-float64-float32-decay)."),
        evidence=TF_KERAS_DECAY + ". Found by bnconf: float64, 2 replicas of 4 rows, running_mean -0.72198129239 "
                 "where momentum 0.99 exactly gives -0.72198129609 (error/bound 3.7e5).",
        source=TF_KERAS_SOURCE,
    ),
    ReplicaDiscrepancy(
        id="equinox-first-step-from-hidden-state",
        backends="equinox.nn.BatchNorm(axis_name)",
        quantities=("running_mean", "running_var"),
        hypothesis=FIRST_STEP_FROM_HIDDEN_STATE,
        batches_seen=(0,),
        explanation=(
            "The single-device behaviour across replicas: equinox.nn.BatchNorm(mode='batch') zero-debiases hidden "
            "averages but divides by 1 while its counter is 0, so a first step from running statistics R gives "
            "(m R + (1 - m) b) / (1 - m) = b + R m / (1 - m) on every replica instead of the global batch statistic b."),
        evidence=("equinox v0.13.8 equinox/nn/_batch_norm.py, BatchNorm.__call__: `scale = jnp.where(counter == 0, 1, "
                  "1 - self.momentum**counter)` and `new_hidden_var = hidden_var * self.momentum + var * (1 - "
                  "self.momentum)`. Found by bnconf: every replica-sharded example with batch count 0 and given "
                  "running statistics, running_mean/var ~1e7 x the bound off b and within it of b + R m / (1 - m)."),
        source="https://github.com/patrick-kidger/equinox/blob/v0.13.8/equinox/nn/_batch_norm.py",
    ),
    ReplicaDiscrepancy(
        id="naive-syncbn-world-size-1-is-plain-batchnorm",
        backends="naive SyncBN",
        quantities=("running_var",),
        hypothesis="running variance unbiased instead of biased",
        world_sizes=(1,),
        explanation=(
            "detectron2's NaiveSyncBatchNorm falls back to torch.nn.BatchNorm2d.forward when the world size is 1, "
            "which keeps the Bessel-corrected (unbiased) batch variance in running_var; with 2 or more replicas it "
            "keeps the biased one (`self.running_var += momentum * (var.detach() - self.running_var)`)."),
        evidence=("facebookresearch/detectron2 (commit 047d477) detectron2/layers/batch_norm.py::"
                  "NaiveSyncBatchNorm.forward: `if comm.get_world_size() == 1 or not self.training: return "
                  "super().forward(input)`. Found by bnconf: one replica, running_var within 0.13 x the bound of "
                  "the unbiased update and 5e3 x off the biased one."),
        source="https://github.com/facebookresearch/detectron2/blob/047d4775b447cb23539222c5c54a1ec17fb4f3c3/detectron2/layers/batch_norm.py",
    ),
)
"""The built-in records, in lookup order (the first covering an example is applied)."""


def replica_discrepancies_for(backend) -> tuple[ReplicaDiscrepancy, ...]:
    """The records that apply to `backend`: its own (`known_discrepancies` entries of this type) first, then
    the built-ins whose pattern matches its name."""
    own = tuple(r for r in (getattr(backend, "known_discrepancies", None) or ()) if isinstance(r, ReplicaDiscrepancy))
    return own + tuple(r for r in ENTRIES if matches(backend.name, r.backends) and r not in own)


__all__ = ["BEHAVIOURS", "DECLARED", "EMPTY_REPLICA_KEEPS_RUNNING", "FIRST_STEP_FROM_HIDDEN_STATE", "ENTRIES", "NAN_EVERYWHERE", "float32_decay", "ReplicaDiscrepancy", "replica_discrepancies_for"]
