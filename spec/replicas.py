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

`sharded_step` is the float64 reference of one step (forward and backward) per replica; `expected_step` the
values and error bounds a correct implementation stays within, built on `expect.expected` (SPEC.md section 6).
"""

from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from . import checks
from .checks import InputError
from . import oracle
from .conventions import Convention
from .error_model import Precision, VarianceAlgorithm
from .expect import Expected, Inputs, Mode, exactly, expected
from .formats import float_format
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


# ---------------------------------------------------------------- the float64 reference of one step

QUANTITIES = ("y", "running_mean", "running_var", "dx", "dgamma", "dbeta")  # what a replica step returns


@dataclass(frozen=True)
class ReplicaStep:
    """One step's reference values: per replica y, the running statistics it holds afterwards (None when not
    tracked) and dx (None without dy); dgamma and dbeta the gradient of the sum of the replicas' losses."""

    y: tuple[np.ndarray, ...]
    running: tuple[RunningStats, ...] | None = None
    dx: tuple[np.ndarray, ...] | None = None
    dgamma: np.ndarray | None = None
    dbeta: np.ndarray | None = None

    def stacked(self) -> dict[str, np.ndarray]:
        """The judging shapes: y and dx concatenated over replicas, running statistics stacked (W, C)."""
        out = {"y": np.concatenate(self.y, axis=BATCH_AXIS)}
        if self.running is not None:
            out["running_mean"] = np.stack([r.mean for r in self.running])
            out["running_var"] = np.stack([r.var for r in self.running])
        if self.dx is not None:
            out.update(dx=np.concatenate(self.dx, axis=BATCH_AXIS), dgamma=self.dgamma, dbeta=self.dbeta)
        return out


def _policy(running: list, policy: RunningPolicy, global_running=None) -> tuple:
    """What each replica holds after a per-replica step, from each replica's own update (SPEC.md section 6.2)."""
    w = len(running)
    if policy is RunningPolicy.PER_REPLICA:
        return tuple(running)
    if policy is RunningPolicy.BROADCAST_RANK0:
        return (running[0],) * w
    if policy is RunningPolicy.AVERAGED:
        return (RunningStats(sum(r.mean for r in running) / w, sum(r.var for r in running) / w, running[0].count),) * w
    return (global_running,) * w


@np.errstate(all="ignore")
def sharded_step(sharded: ShardedInputs, convention: Convention, replica: ReplicaConvention) -> ReplicaStep:
    """The float64 oracle of one step. Synchronized: single-device batch norm of the concatenation, every
    replica holding the global running statistics, its dx the slice of the global one. Per-replica: each shard
    alone (an empty shard's replica returns empty y and dx and keeps its running statistics, SPEC.md section 5),
    running statistics per `replica.running`, dgamma and dbeta summed over replicas."""
    check_shards(sharded)
    full, w, rows = sharded.concatenated(), sharded.world_size, sharded.rows
    common = dict(convention=convention, axis=sharded.axis, eps=sharded.eps)
    channels = np.shape(full.x)[channel_axis(full.x.ndim, sharded.axis)]
    gamma, beta = oracle.affine(sharded.gamma, sharded.beta, channels)

    def forward(i: Inputs):
        """(y, running after) of one single-device training forward; an empty batch keeps its statistics."""
        if i.x.shape[BATCH_AXIS] == 0:
            return np.zeros(i.x.shape), i.running
        out = oracle.forward_train(i.x, gamma, beta, i.running, momentum=i.momentum, **common)
        return out.y, out.running

    def backward(i: Inputs):
        if i.x.shape[BATCH_AXIS] == 0:
            return np.zeros(i.x.shape), np.zeros(channels), np.zeros(channels)
        g = oracle.backward_train(i.dy, i.x, gamma, **common)
        return g.dx, g.dgamma, g.dbeta

    y_full, running_full = forward(full)
    if replica.semantics is Semantics.SYNCHRONIZED:
        running = None if sharded.running is None else (running_full,) * w
        step = ReplicaStep(split_rows(y_full, rows), running)
        if sharded.dys is not None:
            dx, dgamma, dbeta = backward(full)
            step = replace(step, dx=split_rows(dx, rows), dgamma=dgamma, dbeta=dbeta)
        return step
    parts = [forward(sharded.shard(r)) for r in range(w)]
    running = None if sharded.running is None else _policy([p[1] for p in parts], replica.running, running_full)
    step = ReplicaStep(tuple(p[0] for p in parts), running)
    if sharded.dys is not None:
        grads = [backward(sharded.shard(r)) for r in range(w)]
        step = replace(step, dx=tuple(g[0] for g in grads), dgamma=sum(g[1] for g in grads),
                       dbeta=sum(g[2] for g in grads))
    return step


# ---------------------------------------------------------------- expected values and bounds of one step

_STABILITY = (VarianceAlgorithm.TWO_PASS, VarianceAlgorithm.WELFORD, VarianceAlgorithm.ONE_PASS)


def combine_precision(precision: Precision, combine: Combine | None, world_size: int) -> Precision:
    """The precision of a synchronized step's statistics: every reduction is per-shard sums and then W - 1
    additions of the partials (`Summation.combine`), and the variance algorithm is the less stable of the
    declared one and the combine rule's (all-reduced sums of x and x**2 are a one-pass variance; merged
    (count, mean, M2) a Welford one). One replica combines nothing but keeps a one-pass rule's formula."""
    summation = replace(precision.summation, combine=precision.summation.combine + world_size - 1)
    variance = precision.variance
    if combine is not None and (world_size > 1 or combine.variance is VarianceAlgorithm.ONE_PASS):
        variance = max(variance, combine.variance, key=_STABILITY.index)
    return replace(precision, summation=summation, variance=variance)


def _tiled(e: Expected, w: int) -> Expected:
    """A per-channel Expected held by every one of w replicas: shape (W, C), channels on axis 1."""
    tile = lambda a: None if a is None else np.tile(np.asarray(a)[None], (w, 1))  # noqa: E731
    return Expected(tile(e.value), tile(e.bound), tile(e.bound_one_pass), tile(e.ill), tile(e.ill_one_pass),
                    e.why, 1, tile(e.nonfinite_ok))


def _stacked(parts: list[Expected]) -> Expected:
    """Per-replica per-channel Expecteds stacked (W, C), channels on axis 1."""
    return _joined(parts, np.stack, 1)


def _concatenated(parts: list[Expected], axis: int) -> Expected:
    """Per-replica Expecteds of shard-shaped quantities concatenated along the batch axis."""
    return _joined(parts, lambda a: np.concatenate(a, axis=BATCH_AXIS), axis)


def _joined(parts: list[Expected], join, axis: int) -> Expected:
    ok = [p.nonfinite_ok for p in parts]
    nonfinite = None if all(o is None for o in ok) else join(
        [np.zeros(p.value.shape, dtype=bool) if o is None else np.broadcast_to(o, p.value.shape) for p, o in zip(parts, ok)])
    return Expected(join([p.value for p in parts]), join([p.bound for p in parts]),
                    join([p.bound_one_pass for p in parts]), join([np.broadcast_to(p.ill, p.value.shape) for p in parts]),
                    join([np.broadcast_to(p.ill_one_pass, p.value.shape) for p in parts]), _worst_why(parts), axis,
                    nonfinite)


def _worst_why(parts: list[Expected]):
    """The ill-conditioning record of the replica furthest from a bound (reports word one reason)."""
    whys = [p.why for p in parts if p.why is not None]
    if not whys:
        return None
    with np.errstate(invalid="ignore"):
        return max(whys, key=lambda w: float(np.nanmax(w.severity(), initial=0.0)))


def _summed(parts: list[Expected], fmt: str) -> Expected:
    """The sum over replicas of per-channel quantities (dgamma, dbeta): their bounds plus W - 1 additions in `fmt`."""
    u = float_format(fmt).unit_roundoff
    value = sum(p.value for p in parts)
    extra = (len(parts) - 1) * u * sum(np.abs(p.value) for p in parts)
    return Expected(value, sum(p.bound for p in parts) + extra, sum(p.bound_one_pass for p in parts) + extra,
                    np.logical_or.reduce([p.ill for p in parts]), np.logical_or.reduce([p.ill_one_pass for p in parts]),
                    _worst_why(parts), 0, None)


def _averaged(parts: list[Expected], fmt: str) -> Expected:
    """The mean over replicas (the AVERAGED policy): W - 1 additions and one division in `fmt`."""
    w, u = len(parts), float_format(fmt).unit_roundoff
    s = _summed(parts, fmt)
    value = s.value / w
    extra = u * np.abs(value)
    return replace(s, value=value, bound=s.bound / w + extra, bound_one_pass=s.bound_one_pass / w + extra)


def _empty_shard(i: Inputs, channels: int, backward: bool) -> dict[str, Expected]:
    """An empty shard's replica (per-replica semantics): empty y and dx, its running statistics unchanged (an
    empty batch carries no statistics, SPEC.md section 5), exact zero dgamma and dbeta (empty sums)."""
    nothing = exactly(np.zeros(i.x.shape), "y")
    out = {"y": nothing}
    if i.running is not None:
        out.update(running_mean=exactly(i.running.mean, "running_mean"), running_var=exactly(i.running.var, "running_var"))
    if backward:
        out.update(dx=nothing, dgamma=exactly(np.zeros(channels), "dgamma"), dbeta=exactly(np.zeros(channels), "dbeta"))
    return out


def _single_step(i: Inputs, convention: Convention, precision: Precision, backward: bool,
                 single=expected) -> dict[str, Expected]:
    """Single-device training forward (y, running statistics) and backward (dx, dgamma, dbeta) of one batch, by
    `single(mode, inputs, convention, precision)` (`expect.expected`, or a mistake's model)."""
    fwd = single(Mode.TRAIN_FORWARD, replace(i, dy=None), convention, precision)
    out = {q: fwd[q] for q in ("y", "running_mean", "running_var") if q in fwd}
    if backward:
        bwd = single(Mode.TRAIN_BACKWARD, replace(i, running=None), convention, precision)
        out.update({q: bwd[q] for q in ("dx", "dgamma", "dbeta")})
    return out


def expected_step(sharded: ShardedInputs, convention: Convention, replica: ReplicaConvention, precision: Precision,
                  backward: bool) -> dict[str, Expected]:
    """Oracle values and bounds of one replica step (SPEC.md section 6): y (x's full shape, replicas
    concatenated along the batch axis), running_mean and running_var (W, C) when the inputs carry running
    statistics, and with `backward` dx (full shape), dgamma and dbeta (C,).

    Synchronized: `expect.expected` of the concatenation under `combine_precision` (the combine step's
    summation and variance algorithm), with INVSTD_REBUILT's loss added (`_invstd_rebuilt`); every replica
    holds the global running statistics. Per-replica: `expect.expected` of each shard under the declared
    precision, running statistics by `replica.running`, dgamma and dbeta summed. An empty shard contributes
    nothing (the step of an empty whole batch leaves the running statistics unchanged)."""
    return step_model(sharded, convention, replica, precision, backward)


def step_model(sharded: ShardedInputs, convention: Convention, replica: ReplicaConvention, precision: Precision,
               backward: bool, single=expected) -> dict[str, Expected]:
    """`expected_step` with the single-device model `single(mode, inputs, convention, precision)` in place of
    `expect.expected`: a single-device mistake's model (spec/replica_diagnosis.py) carried across replicas."""
    check_shards(sharded)
    if backward and sharded.dys is None:
        raise InputError("a step with backward needs dy shards: give ShardedInputs(dys=...), one per replica")
    full, w = sharded.concatenated(), sharded.world_size
    axis = channel_axis(full.x.ndim, sharded.axis)
    channels = full.x.shape[axis]
    synchronized = replica.semantics is Semantics.SYNCHRONIZED
    global_precision = combine_precision(precision, replica.combine if synchronized else None, w)
    whole = (_empty_shard(full, channels, backward) if full.x.shape[BATCH_AXIS] == 0
             else _single_step(full, convention, global_precision, backward, single))
    if synchronized and replica.combine is Combine.INVSTD_REBUILT and full.x.shape[BATCH_AXIS] > 0:
        whole = _invstd_rebuilt(whole, full, convention, global_precision)
    if synchronized:
        out = {q: e for q, e in whole.items() if q in ("y", "dx", "dgamma", "dbeta")}
        out.update({q: _tiled(whole[q], w) for q in ("running_mean", "running_var") if q in whole})
        return {q: out[q] for q in QUANTITIES if q in out}
    steps = [_empty_shard(sharded.shard(r), channels, backward) if n == 0
             else _single_step(sharded.shard(r), convention, precision, backward, single)
             for r, n in enumerate(sharded.rows)]
    out = {"y": _concatenated([s["y"] for s in steps], axis)}
    if sharded.running is not None:
        for q in ("running_mean", "running_var"):
            parts = [s[q] for s in steps]
            if replica.running is RunningPolicy.PER_REPLICA:
                out[q] = _stacked(parts)
            elif replica.running is RunningPolicy.BROADCAST_RANK0:
                out[q] = _tiled(parts[0], w)
            elif replica.running is RunningPolicy.AVERAGED:
                out[q] = _tiled(_averaged(parts, precision.stats), w)
            else:
                out[q] = _tiled(whole[q], w)
    if backward:
        out["dx"] = _concatenated([s["dx"] for s in steps], axis)
        out.update({q: _summed([s[q] for s in steps], precision.stats) for q in ("dgamma", "dbeta")})
    return out


INVSTD_REBUILT_UNITS = 8  # |var_r rebuilt - var_r| <= 8 u_c (var_r + eps): SPEC.md section 6.3


@np.errstate(all="ignore")
def _invstd_rebuilt(out: dict[str, Expected], full: Inputs, convention: Convention, p: Precision) -> dict[str, Expected]:
    """Widen the bounds by the loss of rebuilding each replica's variance from its inverse standard deviation.

    s_r = fl(1 / fl(sqrt(fl(var_r + eps)))) is off by 2.5 u relative, fl(1 / fl(s_r * s_r)) by 7 u relative to
    var_r + eps, and the subtraction of eps adds u var_r: |d var_r| <= 8 u (var_r + eps). The count-weighted
    merge averages the per-replica variances with weights n_r / N <= 1, and their mean is at most the global
    variance, so the global variance gains dv = 8 u (var + eps). It reaches running_var as w k dv (w the update
    weight, k the Bessel factor) and, through s = s(var) with relative error d = |s'| dv (1 + 2 dv/(var + eps)) / s,
    y by d |y - beta|, dx by d |gamma s (dy - mean dy)| + 3 d |gamma s z mean(dy z)| (z and mean(dy z) carry s
    too) and dgamma by d sum|dy z|. This matters where var << eps: dv is then u eps, far above u var."""
    u = float_format(p.compute).unit_roundoff
    x, i_axis = full.x, full.axis
    stats = oracle.batch_stats(x, i_axis)
    e = oracle.effective_eps(convention, p.attribute(full.eps))
    dv = INVSTD_REBUILT_UNITS * u * (stats.var + e)
    s = oracle.inverse_std(stats.var, e, convention.eps_placement)
    rel = dv / (stats.var + e)
    d = np.abs(oracle.inverse_std_derivative(stats.var, e, convention.eps_placement)) * dv * (1 + 2 * rel) / s
    b = lambda v: oracle.broadcast(v, x.ndim, i_axis)  # noqa: E731

    def widen(q: str, extra) -> Expected:
        return replace(out[q], bound=out[q].bound + extra, bound_one_pass=out[q].bound_one_pass + extra)

    gamma, beta = oracle.affine(full.gamma, full.beta, len(s))
    out = dict(out)
    out["y"] = widen("y", b(d) * np.abs(out["y"].value - b(beta)))
    if "running_var" in out and full.running is not None:
        w = oracle.update_weight(convention, p.attribute(full.momentum), full.running.count + 1)
        k = oracle.variance_factor(convention.running_var, stats.count, convention.bessel_divisor_min)
        out["running_var"] = widen("running_var", abs(w) * k * dv)
    if "dx" in out:
        dy = np.asarray(full.dy, dtype=np.float64)
        z = (x - b(stats.mean)) * b(s)
        rows = lambda a: channels_first(a, i_axis)  # noqa: E731
        mean_dy, mean_dyz = rows(dy).mean(axis=1), rows(dy * z).mean(axis=1)
        gs = np.abs(b(gamma * s))
        out["dx"] = widen("dx", b(d) * gs * (np.abs(dy - b(mean_dy)) + 3 * np.abs(z * b(mean_dyz))))
        out["dgamma"] = widen("dgamma", d * rows(np.abs(dy * z)).sum(axis=1))
    return out
