"""The protocol of a data-parallel batch-norm backend: one training step over W replicas.

A replica backend is any object with these attributes and a `step` method:

    name: str                          unique, e.g. "flax.linen.BatchNorm[axis_name]"
    convention: spec.Convention        its single-device semantics (eps, momentum, running variance, ...)
    replica: spec.replicas.ReplicaConvention
                                       synchronized or per-replica, how statistics are combined, running policy,
                                       and why unequal or empty shards cannot be expressed (None: they can)
    dtypes: tuple[str, ...]            as for a single-device backend
    devices: tuple[str, ...]
    world_sizes: tuple[int, ...]       the replica counts it can run, e.g. (1, 2, 3, 4)
    step(request: ShardedRequest) -> ShardedOutputs

and optionally `precision(dtype, device)`, `unavailable(device)` (None or why it cannot run now, e.g.
"torch.nn.SyncBatchNorm needs a CUDA device"), `versions()`, `close()` (stop its worker processes) and
`known_discrepancies`. A step is one training forward (every replica normalizes its shard, running statistics
are updated) and, when the request carries dy shards, the backward of the same forward.

What a step returns: per replica y and dx (each of its shard's shape) and the running statistics that replica
holds after the step; dgamma and dbeta are the gradient of the sum of the replicas' losses (for DDP, which
averages gradients, that is W times the averaged gradient: an adapter reads the per-replica gradients before
the averaging, or sums them itself).

Faults: a backend raises `ReplicaTimeout` when a collective does not complete in time (a replica hung) and
`ReplicaCrash` when a replica process died; a refusal (ValueError) says the API does not accept the request.
"""

from dataclasses import dataclass

import numpy as np

from ..spec import InputError
from ..spec.replicas import ShardedInputs, check_shards


class ReplicaTimeout(RuntimeError):
    """A replica did not answer in time (a collective that never completes); its group was stopped."""


class ReplicaCrash(RuntimeError):
    """A replica process died (signal or exit code, with its stderr's last lines); its group was stopped."""


@dataclass(frozen=True)
class ShardedRequest:
    """One step: per-replica shards of x and dy (float64 values exactly representable in `dtype`; batch axis 0),
    and the shared parameters in the backend's own convention. gamma/beta None: no affine parameters;
    running_mean/running_var None: statistics not tracked; dys None: forward only."""

    shards: tuple[np.ndarray, ...]
    axis: int
    eps: float
    dtype: str
    device: str = "cpu"
    momentum: float | None = None
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    batches_seen: int = 0
    dys: tuple[np.ndarray, ...] | None = None

    @property
    def world_size(self) -> int:
        return len(self.shards)

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(int(np.shape(s)[0]) for s in self.shards)


@dataclass
class ShardedOutputs:
    """Per replica (tuples of W arrays): y, dx, running statistics after the step; dgamma and dbeta summed
    over replicas. A quantity the API does not expose stays None."""

    y: tuple[np.ndarray, ...] | None = None
    running_mean: tuple[np.ndarray, ...] | None = None
    running_var: tuple[np.ndarray, ...] | None = None
    dx: tuple[np.ndarray, ...] | None = None
    dgamma: np.ndarray | None = None
    dbeta: np.ndarray | None = None


def sharded_request(inputs: ShardedInputs, dtype: str, device: str = "cpu") -> ShardedRequest:
    """The backend's request for `inputs` (copies of every array, so a backend writing into them changes
    nothing bnconf keeps)."""
    check_shards(inputs)
    copy = lambda a: None if a is None else np.array(a, dtype=np.float64)  # noqa: E731
    r = inputs.running
    return ShardedRequest(
        shards=tuple(copy(s) for s in inputs.shards), axis=inputs.axis, eps=inputs.eps, dtype=dtype, device=device,
        momentum=inputs.momentum, gamma=copy(inputs.gamma), beta=copy(inputs.beta),
        running_mean=None if r is None else copy(r.mean), running_var=None if r is None else copy(r.var),
        batches_seen=0 if r is None else r.count,
        dys=None if inputs.dys is None else tuple(copy(d) for d in inputs.dys),
    )


def check_replica_request(backend, r: ShardedRequest) -> None:
    """InputError naming what in `r` the backend cannot take: dtype, device, world size, an unequal or empty
    split its API cannot express (with the record's reason)."""
    where = backend.name
    if r.dtype not in backend.dtypes:
        raise InputError(f"{where}: dtype {r.dtype!r} is not supported (supported: {', '.join(backend.dtypes)})")
    if r.device not in backend.devices:
        raise InputError(f"{where}: device {r.device!r} is not supported (supported: {', '.join(backend.devices)})")
    if r.world_size not in backend.world_sizes:
        raise InputError(f"{where}: {r.world_size} replicas are not supported (world sizes {backend.world_sizes})")
    rows = r.rows
    if len(set(rows)) > 1 and backend.replica.unequal_shards:
        raise InputError(f"{where}: shards of unequal sizes: {backend.replica.unequal_shards}")
    if 0 in rows and backend.replica.empty_shard:
        raise InputError(f"{where}: an empty shard: {backend.replica.empty_shard}")
