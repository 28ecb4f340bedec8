"""Judging one replica step, and naming the data-parallel mistake behind a failure (SPEC.md section 6.4).

`judge_step` compares every quantity of a step (y and dx concatenated over replicas, running statistics stacked
(W, C), dgamma and dbeta) with `replicas.expected_step`, then explains the failing ones by competing hypotheses,
as `spec.diagnosis` does for one device: the replica mistakes below (`REPLICA_HYPOTHESES`), then every
single-device hypothesis of `spec.diagnosis.HYPOTHESES` carried across the replicas (`replicas.step_model`: on the
concatenation for synchronized semantics, per shard for per-replica). Each is a model with its own error bound;
the most specific one that explains every failing quantity (else one quantity alone) is named, with its residual
and the runner-up, by spec.diagnosis's rule (`Fit`, `Ranked`, `Diagnosis`).

The replica mistakes, as models of what an implementation making them returns:

  combine weighted as if shards were equal   every replica's mean weighs 1/W whatever its count (pmean of
        E[x] and E[x**2], or of E[x] and E[(x - mean)**2]: the same weighted statistics in exact arithmetic),
        with autodiff's backward of that weighting. Modelled exactly by single-device batch norm of a replicated
        batch: each shard repeated L / n_r times (L the least common multiple of the counts), an empty shard a
        block of L zeros (a masked pmean's zero contribution), dy divided by the repetitions;
  running variance Bessel-corrected with the local count   n_r / (n_r - 1) instead of N / (N - 1);
  backward not count-weighted (local counts)   all-reduced sum(dy) and sum(dy xhat) divided by W n_r, not N
        (pytorch/pytorch#36382);
  backward from local sums only   each replica's dx from its own shard's sums, not all-reduced;
  per-replica statistics where synchronized was declared, and the reverse;
  running statistics kept per replica where the policy shares them;
  variance rebuilt from invstd   the declared combine with `Combine.INVSTD_REBUILT`'s loss (precision).
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from math import lcm

import numpy as np

from . import diagnosis, oracle
from .checks import InputError
from .conventions import Convention, Variance
from .diagnosis import Fit, Model, _diagnosis, _Evidence, _fit_in, _ranked
from .error_model import Precision
from .expect import Expected, Inputs, Mode, expected
from .formats import float_format
from .replicas import (
    BATCH_AXIS,
    Combine,
    ReplicaConvention,
    RunningPolicy,
    Semantics,
    ShardedInputs,
    _tiled,
    combine_precision,
    expected_step,
    split_rows,
    step_model,
)
from .verdict import Comparison, Verdict, compare, quantity_format

ALL = frozenset({"y", "running_mean", "running_var", "dx", "dgamma", "dbeta"})
RUNNING = frozenset({"running_mean", "running_var"})
MAX_REPLICATED = 1 << 18  # elements: beyond this the equal-weight model is not built (the hypothesis is skipped)

StepModel = Callable[[ShardedInputs, Convention, ReplicaConvention, Precision, bool], "dict[str, Expected] | None"]


@dataclass(frozen=True)
class ReplicaHypothesis:
    """One data-parallel mistake: its name, the verdict it gives, the quantities it changes, and its model of a
    step (`model(sharded, convention, replica, precision, backward)`: the step's Expected values, None where the
    mistake changes nothing for this declaration and case, or its model is undefined there)."""

    name: str
    verdict: Verdict
    quantities: frozenset[str]
    model: StepModel


def _synchronized(replica: ReplicaConvention) -> bool:
    return replica.semantics is Semantics.SYNCHRONIZED


def _unequal(s: ShardedInputs) -> bool:
    return len(set(s.rows)) > 1


def _values_per_row(s: ShardedInputs) -> int:
    """Values per channel in one row of a shard (the product of the axes other than the batch and channel axes)."""
    shape = np.shape(s.shards[0])
    axis = oracle.channel_axis(len(shape), s.axis)
    return int(np.prod([d for k, d in enumerate(shape) if k not in (BATCH_AXIS, axis)]))


# -------- combine weighted as if shards were equal


@np.errstate(all="ignore")
def _equal_weight(s, c, r, p, backward):
    """Single-device batch norm of the replicated batch (module doc); running_var's Bessel factor with N."""
    if not _synchronized(r) or not _unequal(s):
        return None
    rows = s.rows
    total = lcm(*[n for n in rows if n]) if any(rows) else 0
    if total == 0 or total * len(rows) * np.prod(np.shape(s.shards[0])[1:]) > MAX_REPLICATED:
        return None
    shards = [np.asarray(x, np.float64) for x in s.shards]
    repeats = [total // n if n else 0 for n in rows]
    like = shards[0][:0]
    block = lambda x, k, n: np.concatenate([x] * k, axis=BATCH_AXIS) if n else np.zeros((total, *like.shape[1:]))  # noqa: E731
    x = np.concatenate([block(x, k, n) for x, k, n in zip(shards, repeats, rows)], axis=BATCH_AXIS)
    dy = None
    if backward:
        dys = [np.asarray(d, np.float64) for d in s.dys]
        dy = np.concatenate([block(d / k, k, n) if n else np.zeros((total, *like.shape[1:]))
                             for d, k, n in zip(dys, repeats, rows)], axis=BATCH_AXIS)
    big = Inputs(x=x, axis=s.axis, eps=s.eps, gamma=s.gamma, beta=s.beta, running=s.running, momentum=s.momentum,
                 dy=dy, running_error=s.running_error)
    q = combine_precision(p, r.combine, len(rows))
    fwd = expected(Mode.TRAIN_FORWARD, replace(big, dy=None), c, q)
    first = np.concatenate([np.arange(b, b + n) for b, n in zip(np.arange(len(rows)) * total, rows)]).astype(int)
    take = lambda e, scale=None: _rows(e, first, scale)  # noqa: E731
    out = {"y": take(fwd["y"])}
    if s.running is not None:
        out["running_mean"] = _tiled(fwd["running_mean"], len(rows))
        out["running_var"] = _tiled(_bessel(fwd["running_var"], s, c, p, x.shape[0], sum(rows)), len(rows))
    if backward:
        bwd = expected(Mode.TRAIN_BACKWARD, replace(big, running=None), c, q)
        scale = np.concatenate([np.full(n, k, dtype=float) for n, k in zip(rows, repeats)])
        out.update(dx=take(bwd["dx"], scale), dgamma=bwd["dgamma"], dbeta=bwd["dbeta"])
    return out


def _rows(e: Expected, rows: np.ndarray, scale=None) -> Expected:
    """The given rows (batch axis) of a shard-shaped Expected, each multiplied by an exact per-row `scale`."""
    pick = lambda a: None if a is None else np.take(np.broadcast_to(a, e.value.shape), rows, axis=BATCH_AXIS)  # noqa: E731
    f = 1.0 if scale is None else scale.reshape((-1,) + (1,) * (e.value.ndim - 1))
    return Expected(pick(e.value) * f, pick(e.bound) * f, pick(e.bound_one_pass) * f, pick(e.ill), pick(e.ill_one_pass),
                    e.why, e.channel_axis, pick(e.nonfinite_ok))


@np.errstate(all="ignore")
def _bessel(e: Expected, s: ShardedInputs, c: Convention, p: Precision, used: int, wanted: int) -> Expected:
    """A running variance whose batch term carries the Bessel factor of `wanted` rows instead of `used` rows."""
    if c.running_var is not Variance.UNBIASED or s.running is None:
        return e
    per_row = _values_per_row(s)
    k_used = oracle.variance_factor(Variance.UNBIASED, used * per_row, c.bessel_divisor_min)
    k_wanted = oracle.variance_factor(Variance.UNBIASED, wanted * per_row, c.bessel_divisor_min)
    w = oracle.update_weight(c, p.attribute(s.momentum), s.running.count + 1)
    old = np.asarray(s.running.var, np.float64)
    batch = (e.value - (1 - w) * old) / w if w else np.zeros_like(old)
    value = (1 - w) * old + w * batch * (k_wanted / k_used)
    grow = max(1.0, k_wanted / k_used)
    u = float_format(p.stats).unit_roundoff
    return replace(e, value=value, bound=e.bound * grow + u * np.abs(value), bound_one_pass=e.bound_one_pass * grow)


# -------- running variance Bessel-corrected with the local count


@np.errstate(all="ignore")
def _local_bessel(s, c, r, p, backward):
    """Replica r's running variance with n_r / (n_r - 1): every replica then holds its own."""
    shares_global = _synchronized(r) or r.running is RunningPolicy.GLOBAL
    if s.running is None or c.running_var is not Variance.UNBIASED or not shares_global or s.world_size < 2:
        return None
    declared = expected_step(s, c, r, p, backward)
    n = sum(s.rows)
    rv = declared["running_var"]
    rows = [_bessel(_row(rv, k), s, c, p, n, rows_r) if rows_r else _row(rv, k) for k, rows_r in enumerate(s.rows)]
    return {**declared, "running_var": _stack(rows)}


def _row(e: Expected, k: int) -> Expected:
    """Row k of a (W, C) Expected, as a (C,) one."""
    at = lambda a: None if a is None else np.asarray(a)[k]  # noqa: E731
    return Expected(at(e.value), at(e.bound), at(e.bound_one_pass), at(e.ill), at(e.ill_one_pass), e.why, 0,
                    at(e.nonfinite_ok))


def _stack(parts: list[Expected]) -> Expected:
    ok = [p.nonfinite_ok for p in parts]
    nonfinite = None if all(o is None for o in ok) else np.stack(
        [np.zeros(p.value.shape, bool) if o is None else o for p, o in zip(parts, ok)])
    return Expected(np.stack([p.value for p in parts]), np.stack([p.bound for p in parts]),
                    np.stack([p.bound_one_pass for p in parts]), np.stack([p.ill for p in parts]),
                    np.stack([p.ill_one_pass for p in parts]), parts[0].why, 1, nonfinite)


# -------- the backward's weighting


@np.errstate(all="ignore")
def _reweighted_backward(s: ShardedInputs, c, r, p, local: bool):
    """dx with the all-reduced sums divided by W n_r instead of N (`local` False), or with replica r's own sums
    divided by n_r (`local` True), the global statistics as declared. First order, the error of each term scales
    with its weight: the declared bound times max(1, N a_r) (a_r the weight), plus one rounding of the value."""
    if not _synchronized(r) or s.dys is None or s.world_size < 2 or (not local and not _unequal(s)):
        return None
    declared = expected_step(s, c, r, p, True)
    full = s.concatenated()
    x, dy = np.asarray(full.x, np.float64), np.asarray(full.dy, np.float64)
    axis = oracle.channel_axis(x.ndim, s.axis)
    n_rows = sum(s.rows)
    if n_rows == 0:
        return None
    stats = oracle.batch_stats(x, s.axis)
    e = oracle.effective_eps(c, p.attribute(s.eps))
    sv = oracle.inverse_std(oracle.selected_variance(stats, c.normalize_with, c), e, c.eps_placement)
    gamma, _ = oracle.affine(s.gamma, s.beta, len(sv))
    b = lambda v: oracle.broadcast(v, x.ndim, axis)  # noqa: E731
    z = (x - b(stats.mean)) * b(sv)
    per_row = _values_per_row(s)
    parts, factors = [], []
    for g, zz, n in zip(split_rows(dy, s.rows), split_rows(z, s.rows), s.rows):
        if n == 0:
            parts.append(np.zeros(g.shape))
            continue
        summed = (g, g * zz) if local else (dy, dy * z)  # the replica's own sums, or the all-reduced ones
        sum_g, sum_gz = (oracle.channels_first(a, axis).sum(axis=1) for a in summed)
        weight = 1.0 / ((1 if local else s.world_size) * n * per_row)
        parts.append(b(gamma * sv) * (g - b(sum_g * weight) - zz * b(sum_gz * weight)))
        factors.append(np.full(n, max(1.0, weight * n_rows * per_row)))
    value = np.concatenate(parts, axis=BATCH_AXIS)
    grow = np.concatenate(factors).reshape((-1,) + (1,) * (x.ndim - 1))
    u = float_format(p.compute).unit_roundoff
    dx = declared["dx"]
    return {**declared, "dx": replace(dx, value=value, bound=dx.bound * grow + u * np.abs(value),
                                      bound_one_pass=dx.bound_one_pass * grow + u * np.abs(value))}


# -------- semantics and running policy


def _as_per_replica(s, c, r, p, backward):
    if not _synchronized(r) or s.world_size < 2:
        return None
    return expected_step(s, c, replace(r, semantics=Semantics.PER_REPLICA, combine=None,
                                       running=RunningPolicy.PER_REPLICA), p, backward)


def _as_synchronized(s, c, r, p, backward):
    if _synchronized(r) or s.world_size < 2:
        return None
    return expected_step(s, c, replace(r, semantics=Semantics.SYNCHRONIZED, combine=Combine.CHAN_MERGE,
                                       running=RunningPolicy.GLOBAL), p, backward)


def _running_per_replica(s, c, r, p, backward):
    """Each replica's running statistics from its own shard, the rest as declared."""
    if s.running is None or s.world_size < 2 or r.running is RunningPolicy.PER_REPLICA and not _synchronized(r):
        return None
    declared = expected_step(s, c, r, p, backward)
    own = expected_step(s, c, replace(r, semantics=Semantics.PER_REPLICA, combine=None,
                                      running=RunningPolicy.PER_REPLICA), p, False)
    return {**declared, **{q: own[q] for q in RUNNING}}


def _invstd_rebuilt(s, c, r, p, backward):
    if not _synchronized(r) or r.combine is Combine.INVSTD_REBUILT:
        return None
    return expected_step(s, c, replace(r, combine=Combine.INVSTD_REBUILT), p, backward)


EQUAL_WEIGHT = ReplicaHypothesis("combine weighted as if shards were equal", Verdict.NON_CONFORMANT,
                                 frozenset({"y", "running_mean", "running_var", "dx", "dgamma"}), _equal_weight)
LOCAL_BESSEL = ReplicaHypothesis("running variance Bessel-corrected with the local count", Verdict.NON_CONFORMANT,
                                 frozenset({"running_var"}), _local_bessel)
BACKWARD_NOT_COUNT_WEIGHTED = ReplicaHypothesis(
    "backward not count-weighted (local counts)", Verdict.NON_CONFORMANT, frozenset({"dx"}),
    lambda s, c, r, p, backward: _reweighted_backward(s, c, r, p, local=False))
LOCAL_BACKWARD = ReplicaHypothesis(
    "backward from local sums only (not all-reduced)", Verdict.NON_CONFORMANT, frozenset({"dx"}),
    lambda s, c, r, p, backward: _reweighted_backward(s, c, r, p, local=True))
PER_REPLICA_STATISTICS = ReplicaHypothesis("per-replica statistics where synchronized was declared",
                                           Verdict.NON_CONFORMANT, ALL, _as_per_replica)
SYNCHRONIZED_STATISTICS = ReplicaHypothesis("synchronized statistics where per-replica was declared",
                                            Verdict.NON_CONFORMANT, ALL, _as_synchronized)
RUNNING_PER_REPLICA = ReplicaHypothesis("running statistics kept per replica where the policy shares them",
                                        Verdict.NON_CONFORMANT, RUNNING, _running_per_replica)
INVSTD_REBUILT = ReplicaHypothesis("variance rebuilt from invstd", Verdict.PRECISION_DIFFERENCE, ALL, _invstd_rebuilt)

# In order of preference where two fit equally well (the narrower claim first: with one replica holding every row,
# per-replica statistics and running statistics kept per replica predict the same values).
REPLICA_HYPOTHESES: tuple[ReplicaHypothesis, ...] = (
    EQUAL_WEIGHT, LOCAL_BESSEL, BACKWARD_NOT_COUNT_WEIGHTED, LOCAL_BACKWARD, RUNNING_PER_REPLICA,
    PER_REPLICA_STATISTICS, SYNCHRONIZED_STATISTICS, INVSTD_REBUILT,
)
BY_NAME: dict[str, ReplicaHypothesis] = {h.name: h for h in REPLICA_HYPOTHESES}


# -------- single-device hypotheses carried across replicas


def _single_device(h: diagnosis.Hypothesis) -> ReplicaHypothesis:
    """A single-device mistake made by every replica: `step_model` with the mistake's model in place of
    `expect.expected` (the declared model for a mode the mistake leaves alone, or where it changes nothing)."""
    covered = (h.covers(Mode.TRAIN_FORWARD) | h.covers(Mode.TRAIN_BACKWARD)) & ALL

    def model(s, c, r, p, backward):
        if not (h.applies(Mode.TRAIN_FORWARD, c, p) or h.applies(Mode.TRAIN_BACKWARD, c, p)):
            return None
        changed = []

        def single(mode, i, conv, prec):
            m = h.model(mode, i, conv, prec) if h.covers(mode) else None
            changed.append(m is not None)
            return m.expected if m is not None else expected(mode, i, conv, prec)

        out = step_model(s, c, r, p, backward, single)
        return out if any(changed) else None

    return ReplicaHypothesis(h.name, h.verdict, frozenset(covered), model)


SINGLE_DEVICE: tuple[ReplicaHypothesis, ...] = tuple(
    _single_device(h) for h in diagnosis.HYPOTHESES
    if (h.covers(Mode.TRAIN_FORWARD) | h.covers(Mode.TRAIN_BACKWARD)) & ALL)


def _precision_of(name: str, p: Precision) -> Precision:
    """The precision a hypothesis's quantities come back in (a half-precision one holds its statistics there)."""
    h = diagnosis.BY_NAME.get(name)
    q = h.precision(p) if h is not None else None
    return q or p


# ---------------------------------------------------------------- judging one step


def _not_returned(q: str, why: str) -> Comparison:
    return Comparison(q, Verdict.NON_CONFORMANT, why, 0.0, 0.0, 0.0, None, None, None, None, 0, 0, 0)


def required(sharded: ShardedInputs, backward: bool) -> set[str]:
    """What every replica step returns: y; the running statistics when given some; with dy, dx and (with affine
    parameters) dgamma and dbeta."""
    out = {"y"} | (set(RUNNING) if sharded.running is not None else set())
    if backward:
        out |= {"dx"} | ({"dgamma", "dbeta"} if sharded.gamma is not None else set())
    return out


def judge_step(observed: dict, sharded: ShardedInputs, convention: Convention, replica: ReplicaConvention,
               precision: Precision) -> dict[str, Comparison]:
    """Compare a step's outputs (y and dx concatenated over replicas, running statistics stacked (W, C), dgamma,
    dbeta; absent or None where not returned) with `expected_step`, and name the mistake behind the quantities
    outside their bound: one hypothesis that explains all of them, else one per quantity ("explains this quantity
    only"); else they stay NON_CONFORMANT. The backward is judged when dy shards were given."""
    backward = sharded.dys is not None
    exp = expected_step(sharded, convention, replica, precision, backward)
    obs = {q: np.asarray(v, dtype=np.float64) for q, v in observed.items() if v is not None}
    unknown = set(obs) - set(exp)
    stateless = unknown & RUNNING if sharded.running is None else set()
    if unknown - stateless:
        raise ValueError(f"a replica step has no quantity {sorted(unknown - stateless)}; it returns {list(exp)}")
    results = {q: compare(q, obs[q], exp[q], quantity_format(q, precision)) for q in exp if q in obs}
    for q in sorted(required(sharded, backward) - set(obs)):
        results[q] = _not_returned(q, "not returned: every replica step must return it")
    for q in sorted(stateless):
        results[q] = _not_returned(q, f"returned {q} although the step was given no running statistics")
    failing = [q for q, c in results.items() if c.verdict is Verdict.NON_CONFORMANT and q in obs and q in exp]
    if not failing:
        return results
    passing = {q for q, c in results.items() if c.verdict is Verdict.CONFORMS and c.checked and q in exp}
    evidence, verdicts = _evidence(obs, failing, passing, sharded, convention, replica, precision, backward)
    joint = _diagnosis(_ranked(evidence, failing))
    if joint.name:
        return {q: _explained(c, joint, verdicts) if q in failing else c for q, c in results.items()}
    for q in failing:
        alone = _diagnosis(_ranked(evidence, (q,)))
        if alone.name:
            results[q] = _explained(results[q], alone, verdicts, " (explains this quantity only)" if len(failing) > 1 else "")
    return results


def _evidence(obs, failing, passing, s, c, r, p, backward):
    """Per applicable hypothesis (replica ones first, then single-device ones), its fit of each failing quantity
    it changes and the passing quantities it contradicts."""
    evidence, verdicts = {}, {}
    for h in (*REPLICA_HYPOTHESES, *SINGLE_DEVICE):
        qs = [q for q in failing if q in h.quantities]
        if not qs or h.name in evidence:
            continue
        try:
            model = h.model(s, c, r, p, backward)
        except InputError:
            model = None
        if model is None:
            continue
        m = Model(model, _precision_of(h.name, p))
        ev = _Evidence({q: _fit_in(m, q, obs[q]) for q in qs})
        ev.contradicted_by.update(q for q in passing if q in h.quantities and q in obs
                                  and not _fit_in(m, q, obs[q]).within)
        evidence[h.name], verdicts[h.name] = ev, h.verdict
    return evidence, verdicts


def _explained(c: Comparison, d, verdicts: dict, suffix: str = "") -> Comparison:
    return replace(c, verdict=verdicts[d.name], detail=f"{d.name}{suffix} ({d.note})")


def recorded_expected(name: str, sharded: ShardedInputs, convention: Convention, replica: ReplicaConvention,
                      precision: Precision, backward: bool) -> dict[str, Expected]:
    """The expected values of a step under the named mistake (a replica hypothesis or a single-device one): what
    a known-discrepancy record claims instead of the spec. Where the mistake changes nothing for this case (equal
    shards for a wrongly weighted combine), the declared `expected_step`."""
    h = BY_NAME.get(name) or next((x for x in SINGLE_DEVICE if x.name == name), None)
    if h is None:
        known = [x.name for x in (*REPLICA_HYPOTHESES, *SINGLE_DEVICE)]
        raise ValueError(f"no hypothesis named {name!r}; known: {', '.join(known)}")
    model = h.model(sharded, convention, replica, precision, backward)
    declared = expected_step(sharded, convention, replica, precision, backward)
    return declared if model is None else {q: model.get(q, e) for q, e in declared.items()}
