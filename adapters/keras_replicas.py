"""Synchronized batch norm of Keras 3 and tf_keras under tf.distribute.MirroredStrategy, as replica backends.

    keras.layers.BatchNormalization(synchronized=True)      KERAS_SYNC     (Keras 3, TensorFlow backend)
    tf_keras.layers.BatchNormalization(synchronized=True)   TF_KERAS_SYNC  (Keras 2 code line)

Both all-reduce sum(x), sum(x**2) and the local count over the replicas and normalize with
mean = S1 / N, var = max(S2 / N - mean**2, 0) (one-pass; keras/src/backend/tensorflow/nn.py::
_compute_moments_sync, tf_keras/src/layers/normalization/batch_normalization.py::
_sync_calculate_mean_and_var). Each replica is a logical CPU device of ONE worker process
(`keras_replica_worker`, started by a `ReplicaGroup` with KERAS_BACKEND=tensorflow); W in 1..4; shards
of unequal size and empty shards are per-replica values of different batch lengths. Both backends share
that process (Keras 3 and tf_keras are separate packages and coexist; TF_USE_LEGACY_KERAS is not needed).

What a step returns: per replica y, dx (the synchronized gradient: the all-reduce's gradient is an
all-reduce) and the replica's own copy of the moving statistics after its update (Keras 3: mirrored
variables with aggregation NONE, each replica assigns its device's copy; tf_keras: ON_READ variables, one
copy per replica); dgamma and dbeta are the sums over replicas of the per-replica gradients, each of which
holds only that replica's rows (see the worker's docstring).

Single-device records: Keras 3 follows spec.CONVENTIONS["keras.layers.BatchNormalization"]; tf_keras's
synchronized layer is always non-fused (`fused=True` is refused with synchronized=True) and updates its
moving statistics as the non-fused tf.compat.v1 layer does (biased batch variance, decay
float32(1 - momentum)), the record TF_V1_LAYERS_NONFUSED (same BatchNormalizationBase code in tf_keras).

Importing this module imports no framework.
"""

import importlib.metadata
import importlib.util

from ..spec import VarianceAlgorithm, precision_for
from ..spec.conventions import CONVENTIONS, TF_V1_LAYERS_NONFUSED
from ..spec.replica_conventions import KERAS_SYNC, TF_KERAS_SYNC
from .replica_group import ReplicaGroup
from .replica_protocol import ShardedOutputs, ShardedRequest, check_replica_request

ENTRY = "bnconf.adapters.keras_replica_worker:serve"
ENV = {"KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
TIMEOUT_S = 60.0  # one step, including a first trace of a new signature
STARTUP_TIMEOUT_S = 240.0  # the first call: importing TensorFlow and Keras on a loaded 2-core machine
WORLD_SIZES = (1, 2, 3, 4)  # the worker's logical CPU devices (keras_replica_worker.LOGICAL_DEVICES)

_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "keras": ("keras",), "tf_keras": ("tf_keras", "tf-keras")}
_GROUP: ReplicaGroup | None = None  # the one worker process both backends share


def _group() -> ReplicaGroup:
    global _GROUP
    if _GROUP is None:
        _GROUP = ReplicaGroup(ENTRY, processes=1, env=ENV, timeout=TIMEOUT_S, startup_timeout=STARTUP_TIMEOUT_S,
                              label="keras MirroredStrategy worker")
    return _GROUP


def _version(*distributions: str) -> str | None:
    for d in distributions:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


class KerasSyncBatchNorm:
    """One synchronized Keras layer (kind "keras" or "tf_keras") under MirroredStrategy over W logical CPUs."""

    devices = ("cpu",)
    world_sizes = WORLD_SIZES

    def __init__(self, kind: str):
        if kind == "keras":
            self.name = "keras.layers.BatchNormalization[synchronized, MirroredStrategy]"
            self.convention, self.replica = CONVENTIONS["keras.layers.BatchNormalization"], KERAS_SYNC
            self.modules = {"tensorflow": "tensorflow", "keras": "keras"}  # module -> the extra that installs it
            self.dtypes = ("float32", "float64", "float16")
        elif kind == "tf_keras":
            self.name = "tf_keras.layers.BatchNormalization[synchronized, MirroredStrategy]"
            self.convention, self.replica = TF_V1_LAYERS_NONFUSED, TF_KERAS_SYNC
            self.modules = {"tensorflow": "tensorflow", "tf_keras": "tensorflow"}
            self.dtypes = ("float32", "float64", "float16")
        else:
            raise ValueError(f"unknown kind {kind!r}: 'keras' or 'tf_keras'")
        self.kind = kind
        self.traces = 0  # the worker's tf.function traces so far (as of the last step)

    def unavailable(self, device: str) -> str | None:
        """Why it cannot run on `device` now (None: it can); looks for the packages without importing them."""
        if device not in self.devices:
            return f"{self.name} runs on the CPU here (MirroredStrategy over logical CPU devices), not on {device!r}"
        for module, extra in self.modules.items():
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install 'bnconf[{extra}]')"
        return None

    def versions(self) -> dict[str, str]:
        """Installed distributions, from package metadata (nothing is imported)."""
        return {m: v for m in self.modules if (v := _version(*_DISTRIBUTIONS[m]))}

    def precision(self, dtype: str, device: str):
        """float16 computed in float32 (Keras 3: call() casts to result_type(dtype, float32); tf_keras: the
        non-fused path casts 16-bit inputs to float32); float32/float64 in their own format. Statistics: the
        layer's variables, float16 under a float16 Keras 3 policy, float32 in tf_keras (_param_dtype).
        One-pass variance, the all-reduced E[x**2] - E[x]**2 (Combine.SUMS). TensorFlow's CPU kernels flush
        subnormals (tensorflow_common.flush)."""
        stats = "float32" if (self.kind == "tf_keras" and dtype == "float16") else dtype
        return precision_for(dtype, stats=stats, variance=VarianceAlgorithm.ONE_PASS, flush_subnormals=device == "cpu")

    def step(self, request: ShardedRequest) -> ShardedOutputs:
        check_replica_request(self, request)
        r = request
        momentum = self.convention.default_momentum if r.momentum is None else r.momentum
        payload = {
            "kind": self.kind, "dtype": r.dtype, "axis": r.axis, "eps": float(r.eps), "momentum": float(momentum),
            "shards": r.shards, "dys": r.dys, "gamma": r.gamma, "beta": r.beta,
            "running_mean": r.running_mean, "running_var": r.running_var,
        }
        (answer,) = _group().call([payload])
        self.traces = answer["traces"]
        tracked = r.running_mean is not None
        out = ShardedOutputs(
            y=tuple(answer["y"]),
            running_mean=tuple(answer["running_mean"]) if tracked else None,
            running_var=tuple(answer["running_var"]) if tracked else None,
        )
        if r.dys is not None:
            out.dx = tuple(answer["dx"])
            out.dgamma, out.dbeta = answer.get("dgamma"), answer.get("dbeta")
        return out

    def close(self) -> None:
        """Stop the worker process (shared by both backends; the next step starts a fresh one)."""
        if _GROUP is not None:
            _GROUP.close()


BACKENDS = [KerasSyncBatchNorm("keras"), KerasSyncBatchNorm("tf_keras")]
