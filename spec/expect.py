"""What a correct implementation must return for one set of inputs: oracle values with per-element bounds.

`expected(mode, inputs, convention, precision)` runs the oracle under `convention` and the error model
for `precision`, and returns one `Expected` per output quantity of the mode.
"""

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from . import checks, error_model, oracle
from .conventions import Convention
from .error_model import ORACLE_PRECISION, Precision
from .formats import float_format
from .oracle import RunningStats


STATE = ("running_mean", "running_var")  # the running statistics: state a call may change


class Mode(Enum):
    """What is run, and the quantities it returns.

    The eval modes' running_mean/running_var are the running statistics after the call, which must be
    the ones given, bit for bit (SPEC.md section 1.6: eval leaves the state unchanged); returning them is
    optional there (`verdict.required_quantities`).
    """

    TRAIN_FORWARD = "train_forward"
    EVAL_FORWARD = "eval_forward"
    TRAIN_BACKWARD = "train_backward"
    EVAL_BACKWARD = "eval_backward"

    @property
    def quantities(self) -> tuple[str, ...]:
        return {
            Mode.TRAIN_FORWARD: ("y", "saved_mean", "saved_var", "saved_invstd", "running_mean", "running_var"),
            Mode.EVAL_FORWARD: ("y", *STATE),
            Mode.TRAIN_BACKWARD: ("dx", "dgamma", "dbeta"),
            Mode.EVAL_BACKWARD: ("dx", "dgamma", "dbeta", *STATE),
        }[self]


@dataclass(frozen=True)
class Inputs:
    """One batch-norm problem, with momentum and eps in the convention's own terms.

    `running` holds the running statistics before the step (required in eval modes);
    `running_error` an optional bound on the error they already carry (from earlier steps).
    """

    x: np.ndarray
    axis: int
    eps: float
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    running: RunningStats | None = None
    momentum: float | None = None
    dy: np.ndarray | None = None
    running_error: RunningStats | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Expected:
    """The oracle's value of one quantity and the bounds a correct implementation stays within.

    `bound` assumes the declared stable variance algorithm, `bound_one_pass` the E[x^2] - E[x]^2 one;
    `ill` / `ill_one_pass` mark elements where that model gives no bound (see error_model); `why` says, per
    channel, why the stable model has none, and `channel_axis` is the channel's axis in `value`.
    """

    value: np.ndarray
    bound: np.ndarray
    bound_one_pass: np.ndarray
    ill: np.ndarray
    ill_one_pass: np.ndarray
    why: error_model.IllConditioning | None = field(default=None, repr=False, compare=False)
    channel_axis: int = 0
    # elements where the spec accepts any non-finite value in place of the oracle's (`nonfinite_accepted`); None: none
    nonfinite_ok: np.ndarray | None = field(default=None, repr=False, compare=False)

    def ill_reason(self, ill: np.ndarray) -> str:
        """Why the elements marked in `ill` (a subset of `self.ill`) have no bound: how many, in how many channels,
        and the reason for the worst channel (the one furthest from a bound)."""
        n_ill = int(ill.sum())
        if not n_ill:
            return ""
        rows = np.moveaxis(ill, self.channel_axis, 0)
        channels = np.flatnonzero(rows.reshape(rows.shape[0], -1).any(axis=1))
        head = f"{n_ill} of {ill.size} element(s) unchecked, {len(channels)} of {rows.shape[0]} channel(s)"
        if self.why is None:
            return head
        worst = channels[int(np.argmax(self.why.severity()[channels]))]
        return f"{head}; channel {worst}: {self.why.reason(worst)}"


def expected(mode: Mode, inputs: Inputs, convention: Convention, precision: Precision) -> dict[str, Expected]:
    """Oracle values and bounds for each quantity `mode` returns.

    A bound is the implementation's error bound plus the oracle's own (float64) one. Inputs that do not
    fit together (shapes, axis, eps) raise `spec.InputError` naming the problem.
    """
    try:
        mode = Mode(mode)
    except ValueError:
        raise checks.InputError(f"mode {mode!r} is not a spec.Mode: expected one of {', '.join(m.value for m in Mode)}") from None
    i = inputs
    checks.batch(i.x, i.axis, gamma=i.gamma, beta=i.beta, running=i.running, dy=i.dy)
    checks.eps_value(i.eps)
    if mode in (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD) and i.running is None:
        if not convention.untracked_eval_uses_batch_stats:
            raise checks.InputError(f"{mode.value} needs running statistics under {convention.name}: "
                                    "give Inputs(running=RunningStats(mean, var, count))")
        # an untracked module normalizes with the batch statistics in eval too: the training computation
        train = Mode.TRAIN_FORWARD if mode is Mode.EVAL_FORWARD else Mode.TRAIN_BACKWARD
        return {q: e for q, e in expected(train, i, convention, precision).items() if q in mode.quantities}
    x = oracle.as_float64(i.x, "x")
    channels = x.shape[oracle.channel_axis(x.ndim, i.axis)]
    gamma, beta = oracle.affine(i.gamma, i.beta, channels)
    dy = None if i.dy is None else oracle.check_dy(i.dy, x)
    if mode in (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD) and dy is None:
        raise checks.InputError(f"{mode.value} needs an upstream gradient: give Inputs(dy=...) of x's shape")
    common = dict(convention=convention, axis=i.axis, eps=i.eps)
    if mode in (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD):
        running = i.running if mode is Mode.TRAIN_FORWARD else None  # a backward needs no running update
        out = oracle.forward_train(x, gamma, beta, running, momentum=i.momentum, **common)
        stats = oracle.batch_stats(x, i.axis)

        def bounds(p: Precision, one_pass: bool):
            running_error = None if p is ORACLE_PRECISION else i.running_error
            return error_model.train_bounds(
                x, gamma, beta, stats, out, running, running_error, dy,
                momentum=i.momentum, one_pass=one_pass, precision=p, **common,
            )

        if mode is Mode.TRAIN_FORWARD:
            values = {"y": out.y, "saved_mean": out.saved_mean, "saved_var": out.saved_var,
                      "saved_invstd": out.saved_invstd}
            if out.running is not None:
                values.update(running_mean=out.running.mean, running_var=out.running.var)
        else:
            grads = oracle.backward_train(dy, x, gamma, **common)
            values = {"dx": grads.dx, "dgamma": grads.dgamma, "dbeta": grads.dbeta}
    else:
        y = oracle.forward_eval(x, gamma, beta, i.running, **common)

        def bounds(p: Precision, one_pass: bool):
            return error_model.eval_bounds(x, gamma, beta, i.running, y, dy, precision=p, **common)

        if mode is Mode.EVAL_FORWARD:
            values = {"y": y}
        else:
            grads = oracle.backward_eval(dy, x, gamma, i.running, **common)
            values = {"dx": grads.dx, "dgamma": grads.dgamma, "dbeta": grads.dbeta}
        unchanged = {"running_mean": i.running.mean, "running_var": i.running.var}

    stable, own = bounds(precision, False), bounds(ORACLE_PRECISION, False)
    accepted = {}
    if mode is Mode.TRAIN_FORWARD:
        accepted = nonfinite_accepted(stats, stable, convention, precision)
    elif mode is Mode.EVAL_FORWARD:
        accepted = eval_nonfinite_accepted(x, gamma, i.running, convention, i.eps, i.axis, precision)
    # eval modes compute no batch variance: the one-pass model is the stable one there
    one_pass = bounds(precision, True) if mode in (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD) else stable
    out = {
        q: Expected(
            value=v,
            bound=stable.bounds[q] + own.bounds[q],
            bound_one_pass=one_pass.bounds[q] + own.bounds[q],
            ill=np.broadcast_to(stable.ill[q], v.shape),
            ill_one_pass=np.broadcast_to(one_pass.ill[q], v.shape),
            why=stable.why,
            channel_axis=oracle.channel_axis(x.ndim, i.axis) if v.ndim == x.ndim else 0,
            nonfinite_ok=accepted.get(q),
        )
        for q, v in values.items()
    }
    if mode in (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD):
        out.update({q: exactly(v, q) for q, v in unchanged.items()})
    return out


@np.errstate(invalid="ignore")
def nonfinite_accepted(stats: oracle.BatchStats, stable: error_model.Bounds, convention: Convention,
                       precision: Precision) -> dict[str, np.ndarray]:
    """Per channel of a training forward, where any non-finite value is as right as the oracle's (SPEC.md section
    5): the batch mean and running mean of a channel holding an infinity (+-Inf by IEEE sums, NaN by an updating
    mean algorithm), and the batch and running variance where the batch variance may be held as Inf: it exceeds
    the compute or stats format, or its computation overflows (the `stable` model's overflow, e.g. the square of a
    mean one unit in the last place off, for a constant channel near the format's largest value); the running
    update is then Inf, or NaN where the update weight is 0, though the exact value is finite."""
    limit = min(float_format(precision.compute).max_value, float_format(precision.stats).max_value)
    infinite_mean = np.isinf(stats.mean)
    overflow = np.asarray(stable.ill["saved_var"], dtype=bool) | (stats.var > limit)
    running = overflow | (oracle.selected_variance(stats, convention.running_var, convention) > limit)
    return {"saved_mean": infinite_mean, "running_mean": infinite_mean, "saved_var": overflow, "running_var": running}


@np.errstate(all="ignore")
def eval_nonfinite_accepted(x, gamma, running: RunningStats, convention: Convention, eps: float, axis: int,
                            precision: Precision) -> dict[str, np.ndarray]:
    """Where an eval forward's y may be any non-finite value: an infinite x in a channel whose gamma * s lies
    below the compute format's smallest normal number, where the folded coefficient gamma * s may underflow to 0
    (SPEC.md section 4.4) and 0 * Inf is NaN, though the exact value is infinite."""
    s = oracle.inverse_std(running.var, oracle.effective_eps(convention, eps), convention.eps_placement)
    underflows = np.abs(gamma * s) < 2.0 ** float_format(precision.compute).min_exponent
    return {"y": np.isinf(x) & oracle.broadcast(underflows, x.ndim, axis)}


def exactly(value, name: str) -> Expected:
    """A value that admits no error at all (bound 0 everywhere, nothing ill-conditioned): the running
    statistics an eval call must leave as they were given."""
    v = oracle.as_float64(value, name).copy()
    zero, none = np.zeros(v.shape), np.zeros(v.shape, dtype=bool)
    return Expected(value=v, bound=zero, bound_one_pass=zero, ill=none, ill_one_pass=none)
