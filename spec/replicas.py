"""Batch norm across replicas: a batch split into per-replica shards, and its float64 reference.

Data-parallel training gives each of W replicas a shard x_r of the batch (axis 0 is the batch axis; shards
may differ in size, one may be empty) and an upstream gradient dy_r. Two semantics:

  synchronized  every replica normalizes with the statistics of the whole batch, as single-device batch norm
                on the concatenation x = [x_1; ...; x_W] would: global mean and biased variance over
                N = sum(n_r) values per channel, running statistics updated once from them (a Bessel
                correction uses N), replica r's dx the slice of the global dx that belongs to its rows,
                dgamma and dbeta the global ones (the sums over replicas of the per-replica parts);
  per-replica   each replica normalizes with its own shard's statistics (plain batch norm under DDP); its
                running statistics are then kept per replica, broadcast from rank 0, or averaged
                (`RunningPolicy`); dgamma and dbeta are summed over replicas.

How an implementation combines per-replica statistics (`Combine`) is part of its record: it sets the variance
algorithm of the error model (all-reduced sums of x and x**2 are a one-pass variance) and, for a rule that
weights replicas equally, what it computes when shards differ in size (`combined_stats`), which is a
mistake the diagnosis names. Per-replica statistics are (count, mean, M2 = sum((x - mean)**2)), merged by
Chan, Golub and LeVeque's pairwise update.
"""

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from . import checks
from .checks import InputError
from .conventions import Convention
from .error_model import VarianceAlgorithm
from .expect import Inputs
from .oracle import BatchStats, RunningStats, as_float64, channels_first, channel_axis

BATCH_AXIS = 0  # the axis the batch is split along


class Semantics(Enum):
    """Whose statistics a replica normalizes with."""

    SYNCHRONIZED = "synchronized"  # the whole batch's (SyncBatchNorm, Keras synchronized=True, axis_name)
    PER_REPLICA = "per-replica"  # its own shard's (plain batch norm under data parallelism)


class Combine(Enum):
    """How per-replica statistics become the batch's. `count_weighted`: replicas weigh by their counts (exact
    for any split); otherwise each replica's mean weighs 1/W, exact only for equal shards. `variance`: the
    variance algorithm the combined result has, for the error model."""

    CHAN_MERGE = "count-weighted merge of (count, mean, M2)"  # Chan et al.; Welford-style
    SUMS = "all-reduced sum(x), sum(x**2) and count"  # E[x**2] - E[x]**2 of the global sums (Keras sync)
    INVSTD_REBUILT = "all-gathered (count, mean, invstd), var rebuilt as invstd**-2 - eps"  # torch SyncBatchNorm
    EQUAL_WEIGHT_MOMENTS = "mean over replicas of E[x] and E[x**2]"  # pmean of moments (Flax fast, Haiku)
    EQUAL_WEIGHT_CENTERED = "mean over replicas of E[x], then of E[(x - mean)**2]"  # pmean twice (Equinox, Flax slow)

    @property
    def count_weighted(self) -> bool:
        return self in (Combine.CHAN_MERGE, Combine.SUMS, Combine.INVSTD_REBUILT)

    @property
    def variance(self) -> VarianceAlgorithm:
        one_pass = (Combine.SUMS, Combine.EQUAL_WEIGHT_MOMENTS)
        return VarianceAlgorithm.ONE_PASS if self in one_pass else VarianceAlgorithm.WELFORD


class RunningPolicy(Enum):
    """The running statistics each replica holds after a training step."""

    GLOBAL = "global"  # every replica updates from the global statistics (synchronized)
    PER_REPLICA = "kept per replica"  # each from its own shard's
    BROADCAST_RANK0 = "rank 0 broadcast"  # every replica holds rank 0's (DDP broadcast_buffers)
    AVERAGED = "averaged"  # every replica holds the mean over replicas of the per-replica updates


@dataclass(frozen=True)
class ReplicaConvention:
    """How one data-parallel batch-norm API behaves across replicas, beside its single-device `Convention`.

    `unequal_shards` / `empty_shard`: None when the API can express shards of different sizes / an empty
    shard, else why it cannot (such cases are reported unsupported with this reason)."""

    name: str
    api: str
    source: str
    semantics: Semantics
    combine: Combine | None  # None: per-replica semantics combine nothing
    running: RunningPolicy
    unequal_shards: str | None = None
    empty_shard: str | None = None
    notes: str = ""


# ---------------------------------------------------------------- per-replica statistics


@dataclass(frozen=True)
class Partial:
    """One replica's per-channel statistics: n values, their mean and M2 = sum((x - mean)**2)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray


def partial_stats(x, axis: int) -> Partial:
    """(n, mean, M2) of one shard, in float64 (an empty shard: n = 0, mean = M2 = 0)."""
    x = as_float64(x, "x")
    rows = channels_first(x, axis)
    n = rows.shape[1]
    if n == 0:
        return Partial(0, np.zeros(rows.shape[0]), np.zeros(rows.shape[0]))
    mean = rows.mean(axis=1)
    d = rows - mean[:, None]
    mean = mean + d.mean(axis=1)  # one refinement step
    return Partial(n, mean, ((rows - mean[:, None]) ** 2).sum(axis=1))


@np.errstate(invalid="ignore", divide="ignore")
def merge(a: Partial, b: Partial) -> Partial:
    """Chan et al.: n = na + nb, mean = mean_a + (mean_b - mean_a) nb / n, M2 = M2a + M2b + delta**2 na nb / n."""
    n = a.count + b.count
    if a.count == 0 or b.count == 0:
        return b if a.count == 0 else a
    delta = b.mean - a.mean
    return Partial(n, a.mean + delta * (b.count / n), a.m2 + b.m2 + delta**2 * (a.count * b.count / n))


def merged(partials) -> Partial:
    """Every replica's statistics merged, count-weighted (exact in real arithmetic for any split)."""
    out = partials[0]
    for p in partials[1:]:
        out = merge(out, p)
    return out


@np.errstate(invalid="ignore", divide="ignore")
def combined_stats(partials, combine: Combine) -> BatchStats:
    """The batch statistics `combine` yields in exact arithmetic. Count-weighted rules give the global
    statistics; equal-weight rules average over the replicas that hold values (weights 1/W each, an empty
    replica contributing zeros, as a masked pmean does), which differs from the global ones for unequal shards."""
    total = merged(partials)
    n = total.count
    if combine.count_weighted:
        var = total.m2 / n
    else:
        w = len(partials)
        mean = sum(p.mean for p in partials) / w
        if combine is Combine.EQUAL_WEIGHT_MOMENTS:
            second = sum((p.m2 / p.count + p.mean**2) if p.count else np.zeros_like(p.mean) for p in partials) / w
            var = second - mean**2
        else:
            var = sum(((p.m2 / p.count + (p.mean - mean) ** 2) if p.count else np.zeros_like(p.mean))
                      for p in partials) / w
        total = Partial(n, mean, var * n)
        var = total.m2 / n
    unbiased = total.m2 / (n - 1) if n > 1 else np.full_like(var, np.nan)
    return BatchStats(total.mean, var, unbiased, n)


# ---------------------------------------------------------------- a sharded request


@dataclass(frozen=True)
class ShardedInputs:
    """One data-parallel training step: per-replica shards of x (split along axis 0) and of dy, and the
    parameters every replica shares (gamma, beta, running statistics before the step, momentum and eps in
    the convention's own terms)."""

    shards: tuple[np.ndarray, ...]
    axis: int
    eps: float
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    running: RunningStats | None = None
    momentum: float | None = None
    dys: tuple[np.ndarray, ...] | None = None
    running_error: RunningStats | None = field(default=None, repr=False)

    @property
    def world_size(self) -> int:
        return len(self.shards)

    @property
    def rows(self) -> tuple[int, ...]:
        """Rows (batch-axis length) per replica."""
        return tuple(int(np.shape(s)[BATCH_AXIS]) for s in self.shards)

    def concatenated(self) -> Inputs:
        """The single-device inputs of the whole batch: x and dy concatenated along the batch axis."""
        check_shards(self)
        x = np.concatenate([as_float64(s, "x shard") for s in self.shards], axis=BATCH_AXIS)
        dy = None if self.dys is None else np.concatenate([as_float64(d, "dy shard") for d in self.dys], axis=BATCH_AXIS)
        return Inputs(x=x, axis=self.axis, eps=self.eps, gamma=self.gamma, beta=self.beta, running=self.running,
                      momentum=self.momentum, dy=dy, running_error=self.running_error)

    def shard(self, r: int) -> Inputs:
        """Replica r's inputs as a single-device problem."""
        return replace(self.concatenated(), x=as_float64(self.shards[r], "x shard"),
                       dy=None if self.dys is None else as_float64(self.dys[r], "dy shard"))


def check_shards(s: ShardedInputs) -> None:
    """InputError unless the shards agree in everything but their batch length, the channel axis is not
    the batch axis, and dy (if given) has one shard per replica of the same shapes."""
    if not s.shards:
        raise InputError("a sharded request needs at least one replica's shard")
    shapes = [np.shape(checks.real_array(x, "x shard")) for x in s.shards]
    ndim = len(shapes[0])
    axis = channel_axis(ndim, s.axis)
    if axis == BATCH_AXIS:
        raise InputError(f"the channel axis {s.axis} is the batch axis the shards are split along; use another")
    if any(len(sh) != ndim or sh[1:] != shapes[0][1:] for sh in shapes):
        raise InputError(f"shards must differ only in their batch length (axis 0), got shapes {shapes}")
    if s.dys is not None:
        dys = [np.shape(checks.real_array(d, "dy shard")) for d in s.dys]
        if dys != shapes:
            raise InputError(f"dy shards have shapes {dys}, expected the x shards' {shapes}")


def split_rows(a: np.ndarray, rows) -> tuple[np.ndarray, ...]:
    """`a` cut along the batch axis into consecutive pieces of `rows` rows."""
    return tuple(np.split(a, np.cumsum(rows)[:-1], axis=BATCH_AXIS))
