"""Deliberately wrong synchronized batch norms over simulated replicas, to measure whether a replica step's judge
catches and names each data-parallel mistake (tests/conformance/test_replica_mutants.py).

Each mutant is `adapters/example_replicas.py`'s NumPy backend (the replica protocol, replicas simulated in this
process) with one switch from `SWITCHES` on; `MUTANTS` pairs each with the quantity a step on unequal shards must
flag and the name `spec.replica_diagnosis.judge_step` must give it.
"""

from dataclasses import dataclass

import numpy as np

from ..adapters.example_replicas import SimulatedSyncBatchNorm, chan_merge, partial_statistics
from ..adapters.replica_protocol import ShardedOutputs, check_replica_request

SWITCHES = frozenset({
    "equal_weight_combine",  # mean of per-replica E[x] and E[x**2] (each replica weighs 1/W), autodiff's backward
    "local_bessel",  # running variance Bessel-corrected with the replica's own count
    "backward_not_count_weighted",  # all-reduced sum(dy), sum(dy xhat) divided by W n_r instead of N
    "local_backward",  # dx from the replica's own sums only
    "per_replica_statistics",  # every replica normalizes with its own shard's statistics
    "running_from_local",  # normalizes with the global statistics, updates running statistics from its own
})


class MutantSyncBatchNorm(SimulatedSyncBatchNorm):
    """The example synchronized batch norm, wrong where `mistake` switches say."""

    def __init__(self, name: str, **mistake):
        unknown = set(mistake) - SWITCHES
        if unknown:
            raise ValueError(f"unknown switches {sorted(unknown)}; known: {sorted(SWITCHES)}")
        self.name, self.mistake = name, mistake

    def step(self, r):
        check_replica_request(self, r)
        m = self.mistake
        dt = np.dtype(r.dtype)
        xs = [s.astype(dt) for s in r.shards]
        ndim, w = xs[0].ndim, len(xs)
        axis = r.axis % ndim
        shape = [-1 if i == axis else 1 for i in range(ndim)]
        reduce = tuple(i for i in range(ndim) if i != axis)
        c = xs[0].shape[axis]
        partials = [partial_statistics(x, axis) for x in xs]
        n, mean, m2 = chan_merge(partials)
        if n == 0:
            raise ValueError("training needs at least one value per channel over all replicas")
        var = m2 / dt.type(n)
        counts = [p[0] for p in partials]
        if m.get("equal_weight_combine"):  # pmean of E[x] and E[x**2]; an empty replica contributes zeros
            mean = sum(p[1] for p in partials) / dt.type(w)
            second = sum((p[2] / dt.type(p[0]) + p[1] ** 2) if p[0] else np.zeros(c, dt) for p in partials) / dt.type(w)
            var = second - mean**2
        per_replica = m.get("per_replica_statistics")
        stats = [(p[1], p[2] / dt.type(p[0])) if p[0] else (mean, var) for p in partials] if per_replica \
            else [(mean, var)] * w
        gamma = np.ones(c, dt) if r.gamma is None else r.gamma.astype(dt)
        beta = np.zeros(c, dt) if r.beta is None else r.beta.astype(dt)
        inv = [(dt.type(1) / np.sqrt(v + dt.type(r.eps))).reshape(shape) for _, v in stats]
        xhat = [(x - mu.reshape(shape)) * s for x, (mu, _), s in zip(xs, stats, inv)]
        out = ShardedOutputs(y=tuple(h * gamma.reshape(shape) + beta.reshape(shape) for h in xhat))
        if r.running_mean is not None:
            mom = dt.type(r.momentum)
            own = per_replica or m.get("running_from_local")
            rm, rv = [], []
            for k, (nk, mean_k, m2_k) in enumerate(partials):
                if own and nk == 0:  # an empty shard carries no statistics
                    rm.append(r.running_mean.astype(dt))
                    rv.append(r.running_var.astype(dt))
                    continue
                mu, sq, count = (mean_k, m2_k / dt.type(nk), nk) if own else (mean, var, n)
                if m.get("local_bessel") and nk:
                    count = nk
                rm.append((1 - mom) * r.running_mean.astype(dt) + mom * mu)
                rv.append((1 - mom) * r.running_var.astype(dt) + mom * sq * dt.type(count) / dt.type(count - 1))
            out.running_mean, out.running_var = tuple(rm), tuple(rv)
        if r.dys is not None:
            dys = [d.astype(dt) for d in r.dys]
            local_sums = [(d.sum(axis=reduce), (d * h).sum(axis=reduce)) for d, h in zip(dys, xhat)]
            total_dy, total_dyh = sum(s[0] for s in local_sums), sum(s[1] for s in local_sums)
            dx = []
            for k, (d, h, s) in enumerate(zip(dys, xhat, inv)):
                if per_replica or m.get("local_backward"):
                    sum_dy, sum_dyh, weight = *local_sums[k], dt.type(counts[k])
                elif m.get("equal_weight_combine") or m.get("backward_not_count_weighted"):
                    sum_dy, sum_dyh, weight = total_dy, total_dyh, dt.type(w * counts[k])
                else:
                    sum_dy, sum_dyh, weight = total_dy, total_dyh, dt.type(n)
                if counts[k] == 0:
                    dx.append(np.zeros_like(d))
                    continue
                k_ = gamma.reshape(shape) * s
                dx.append(k_ * (d - (sum_dy / weight).reshape(shape) - h * (sum_dyh / weight).reshape(shape)))
            out.dx = tuple(dx)
            out.dgamma, out.dbeta = total_dyh, total_dy
        return out


@dataclass(frozen=True)
class Mutant:
    """A wrong backend, the quantity a step on unequal shards must flag, and the mistake it must be named by."""

    backend: MutantSyncBatchNorm
    flags: str
    diagnosis: str


MUTANTS: tuple[Mutant, ...] = (
    Mutant(MutantSyncBatchNorm("mutant.sync.equal_weight", equal_weight_combine=True), "y",
           "combine weighted as if shards were equal"),
    Mutant(MutantSyncBatchNorm("mutant.sync.local_bessel", local_bessel=True), "running_var",
           "running variance Bessel-corrected with the local count"),
    Mutant(MutantSyncBatchNorm("mutant.sync.backward_not_count_weighted", backward_not_count_weighted=True), "dx",
           "backward not count-weighted (local counts)"),
    Mutant(MutantSyncBatchNorm("mutant.sync.local_backward", local_backward=True), "dx",
           "backward from local sums only (not all-reduced)"),
    Mutant(MutantSyncBatchNorm("mutant.sync.per_replica", per_replica_statistics=True), "y",
           "per-replica statistics where synchronized was declared"),
    Mutant(MutantSyncBatchNorm("mutant.sync.running_from_local", running_from_local=True), "running_mean",
           "running statistics kept per replica where the policy shares them"),
)
