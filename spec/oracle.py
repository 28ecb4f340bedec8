"""The float64 reference for batch normalization: small pure NumPy functions that read like the formulas.

Per channel c (every axis but `axis` is reduced, n values per channel):
    mean = sum(x) / n,   var = sum((x - mean)**2) / n,   var_unbiased = var * n / (n - 1)
    s = 1 / sqrt(V + eps)           V: the variance the convention normalizes with (biased everywhere)
    y = gamma * (x - mean) * s + beta
Training updates running statistics, eval normalizes with them. Inputs of any real dtype are upcast
to float64 exactly; every result is float64. Conventions (`spec.conventions`) choose the variants.
"""

from dataclasses import dataclass
from functools import partial

import numpy as np

from . import checks
from .checks import InputError
from .conventions import Convention, EpsPlacement, Variance, new_batch_weight


# ---------------------------------------------------------------- inputs


def as_float64(a, name: str) -> np.ndarray:
    """`a` as a float64 array; a clear error for non-real dtypes."""
    return checks.real_array(a, name).astype(np.float64)


def channel_axis(ndim: int, axis: int) -> int:
    """`axis` as a non-negative index into an array of rank `ndim`."""
    checks.integer("the channel axis", axis)
    if ndim < 2:
        raise InputError(f"x must have rank 2 or more (batch and channel axes), got rank {ndim}")
    if not -ndim <= axis < ndim:
        raise InputError(f"channel axis {axis} is out of range for an input of rank {ndim}")
    return axis % ndim


def _per_channel(a, name: str, channels: int) -> np.ndarray:
    arr = as_float64(a, name)
    if arr.shape != (channels,):
        raise InputError(f"{name} has shape {arr.shape}, expected ({channels},): one value per channel")
    return arr


def channels_first(x: np.ndarray, axis: int) -> np.ndarray:
    """x rearranged to shape (C, n): one contiguous row per channel."""
    axis = channel_axis(x.ndim, axis)
    if x.shape[axis] == 0:
        raise InputError(f"x has no channels: its size along the channel axis {axis} is 0 (shape {x.shape})")
    return np.ascontiguousarray(np.moveaxis(x, axis, 0)).reshape(x.shape[axis], -1)


def broadcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against an input of rank `ndim`."""
    shape = [1] * ndim
    shape[channel_axis(ndim, axis)] = -1
    return np.reshape(v, shape)


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class BatchStats:
    """Per-channel statistics of one batch; arrays of shape (C,)."""

    mean: np.ndarray
    var: np.ndarray  # biased: sum((x - mean)**2) / n
    var_unbiased: np.ndarray  # Bessel-corrected: sum((x - mean)**2) / (n - 1); NaN for n = 1
    count: int  # n, values per channel


def _peak_exponents(rows: np.ndarray) -> np.ndarray:
    """Per row, e with the largest finite |x| = m * 2**e, m in [0.5, 1) (0 for rows of zeros, non-finite or empty)."""
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0], dtype=int)
    with np.errstate(invalid="ignore"):
        peak = np.max(np.abs(rows), axis=1)
    return np.frexp(np.where(np.isfinite(peak) & (peak > 0), peak, 1.0))[1] - 1


def batch_stats(x, axis: int) -> BatchStats:
    """Mean and variances over every axis but `axis`, by the corrected two-pass algorithm.

    Each channel is scaled by a power of two that brings its largest |x| near 1, exactly, and its statistics
    scaled back: the same numbers as unscaled, except that values near the format's largest (or smallest) give
    the variance correctly rounded (Inf where it exceeds float64) instead of Inf - Inf = NaN from overflowing
    squares (or 0 from underflowing ones). The mean gets one refinement step (the mean of x - mean added back)."""
    checks.batch(x, axis)
    rows = channels_first(as_float64(x, "x"), axis)
    n = rows.shape[1]
    e = _peak_exponents(rows)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scaled = np.ldexp(rows, -e[:, None])
        mean = scaled.sum(axis=1) / n
        d = scaled - mean[:, None]
        sum_d = d.sum(axis=1)
        # sum(d)**2 / n removes the first-order error of the computed mean (Chan, Golub, LeVeque 1983)
        sum_sq = np.maximum((d * d).sum(axis=1) - sum_d**2 / n, 0.0)
        var = np.ldexp(sum_sq / n, 2 * e)
        # one refinement step: exact for a constant channel, whose x - mean is then 0 (an infinite mean stays)
        mean = np.where(np.isfinite(sum_d), mean + sum_d / n, mean)
        var_unbiased = np.ldexp(sum_sq / (n - 1), 2 * e) if n > 1 else np.full_like(var, np.nan)
    return BatchStats(np.ldexp(mean, e), var, var_unbiased, n)


def variance_factor(which: Variance, n: int, divisor_min: int = 0) -> float:
    """k with (chosen variance) = k * (biased variance): 1, or n / max(n - 1, divisor_min) (inf at n = 1)."""
    if which is Variance.BIASED:
        return 1.0
    with np.errstate(divide="ignore"):
        return float(np.float64(n) / max(n - 1, divisor_min))


def selected_variance(stats: BatchStats, which: Variance, convention: Convention) -> np.ndarray:
    """The biased variance scaled to the estimator `which`, with the convention's Bessel divisor floor."""
    return stats.var * variance_factor(which, stats.count, convention.bessel_divisor_min)


def _check_convention(convention) -> Convention:
    if not isinstance(convention, Convention):
        raise InputError(f"convention must be a spec.Convention record (see spec.convention(name)), got {convention!r}")
    return convention


def effective_eps(convention: Convention, eps: float) -> float:
    """eps after the convention's clamp: max(eps, eps_min)."""
    return max(checks.eps_value(eps), convention.eps_min)


def inverse_std(var, eps: float, placement: EpsPlacement = EpsPlacement.INSIDE_SQRT) -> np.ndarray:
    """s = 1 / sqrt(var + eps), or 1 / (sqrt(var) + eps) for the outside-the-root placement."""
    var = np.asarray(var, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if placement is EpsPlacement.INSIDE_SQRT:
            return 1.0 / np.sqrt(var + eps)
        return 1.0 / (np.sqrt(var) + eps)


def inverse_std_derivative(var, eps: float, placement: EpsPlacement = EpsPlacement.INSIDE_SQRT) -> np.ndarray:
    """ds/dvar of `inverse_std`: -s**3 / 2 inside the root, -s**2 / (2 sqrt(var)) outside."""
    s = inverse_std(var, eps, placement)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s**2 * inverse_std_derivative_over_square(var, eps, placement)


def inverse_std_derivative_over_square(var, eps: float, placement: EpsPlacement = EpsPlacement.INSIDE_SQRT) -> np.ndarray:
    """(ds/dvar) / s**2: -s / 2 inside the root, -1 / (2 sqrt(var)) outside; free of the s**3 that underflows
    for a variance near the format's largest value."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if placement is EpsPlacement.INSIDE_SQRT:
            return -0.5 * inverse_std(var, eps, placement)
        return -0.5 / np.sqrt(np.asarray(var, dtype=np.float64))


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def normalize(x, mean, invstd, gamma, beta, axis: int) -> np.ndarray:
    """y = gamma * (x - mean) * invstd + beta, per channel."""
    x = as_float64(x, "x")
    b = partial(broadcast, ndim=x.ndim, axis=axis)
    # gamma multiplies last: a tiny gamma must not turn an intermediate subnormal and lose its digits
    return (x - b(mean)) * b(invstd) * b(gamma) + b(beta)


# ---------------------------------------------------------------- running statistics


@dataclass(frozen=True)
class RunningStats:
    """Running mean and variance, and the number of training batches they have seen."""

    mean: np.ndarray
    var: np.ndarray
    count: int = 0

    @classmethod
    def initial(cls, channels: int) -> "RunningStats":
        """Every framework's starting point: mean 0, variance 1, no batches."""
        return cls(np.zeros(channels), np.ones(channels), 0)


def update_weight(convention: Convention, momentum: float | None, step: int) -> float:
    """w, the weight of the step-th batch (step >= 1) in running <- (1 - w) * running + w * batch."""
    if momentum is None:
        if not convention.cumulative_average:
            raise InputError(f"{convention.name} needs a numeric momentum (None is not a cumulative average there)")
        return 1.0 / step
    checks.finite_number("momentum", momentum)
    w = new_batch_weight(convention, momentum)
    if convention.zero_debias:
        # w / (1 - (1 - w)**t), with 1 - (1 - w)**t = -expm1(t log1p(-w)) free of cancellation; limit 1/t as w -> 0
        return w / -np.expm1(step * np.log1p(-w)) if w != 0.0 else 1.0 / step
    return w


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def update_running_stats(
    running: RunningStats, stats: BatchStats, convention: Convention, momentum: float | None
) -> RunningStats:
    """One training step's update: each statistic moves toward the batch's by the weight w."""
    _check_convention(convention)
    running = _checked_running(running, len(stats.mean))
    step = running.count + 1
    w = update_weight(convention, momentum, step)
    batch_var = selected_variance(stats, convention.running_var, convention)
    return RunningStats(
        (1.0 - w) * running.mean + w * stats.mean,
        (1.0 - w) * running.var + w * batch_var,
        step,
    )


# ---------------------------------------------------------------- forward


@dataclass(frozen=True)
class TrainForward:
    """Outputs of a training-mode forward."""

    y: np.ndarray
    saved_mean: np.ndarray  # batch mean, saved for the backward
    saved_var: np.ndarray  # the variance the output was normalized with
    saved_invstd: np.ndarray  # 1 / sqrt(saved_var + eps)
    running: RunningStats | None  # updated running statistics; None when not tracked


def affine(gamma, beta, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """gamma and beta as float64 vectors; an absent one is the identity (1 or 0)."""
    g = np.ones(channels) if gamma is None else _per_channel(gamma, "gamma", channels)
    b = np.zeros(channels) if beta is None else _per_channel(beta, "beta", channels)
    return g, b


def _checked_running(running: RunningStats, channels: int) -> RunningStats:
    if not isinstance(running, RunningStats):
        raise InputError(f"running statistics must be a RunningStats(mean, var, count), got {type(running).__name__}")
    if isinstance(running.count, bool) or not isinstance(running.count, (int, np.integer)) or running.count < 0:
        raise InputError(f"the running statistics' batch count must be an integer >= 0, got {running.count!r}")
    return RunningStats(
        _per_channel(running.mean, "running.mean", channels),
        _per_channel(running.var, "running.var", channels),
        running.count,
    )


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def forward_train(
    x,
    gamma=None,
    beta=None,
    running: RunningStats | None = None,
    *,
    convention: Convention,
    axis: int,
    eps: float,
    momentum: float | None = None,
) -> TrainForward:
    """Normalize with the batch statistics; update `running` (if given) by the convention's rule."""
    _check_convention(convention)
    checks.batch(x, axis, gamma=gamma, beta=beta, running=running)
    if running is not None and not convention.tracks_running_stats:
        raise InputError(f"{convention.name} keeps no running statistics; pass running=None")
    x = as_float64(x, "x")
    channels = x.shape[channel_axis(x.ndim, axis)]
    g, b = affine(gamma, beta, channels)
    stats = batch_stats(x, axis)
    var = selected_variance(stats, convention.normalize_with, convention)
    s = inverse_std(var, effective_eps(convention, eps), convention.eps_placement)
    new_running = None
    if running is not None:
        new_running = update_running_stats(_checked_running(running, channels), stats, convention, momentum)
    return TrainForward(normalize(x, stats.mean, s, g, b, axis), stats.mean, var, s, new_running)


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def forward_eval(
    x, gamma=None, beta=None, running: RunningStats = None, *, convention: Convention, axis: int, eps: float
) -> np.ndarray:
    """Normalize with the running statistics: y = gamma * (x - running.mean) * s(running.var) + beta."""
    _check_convention(convention)
    if running is None:
        raise InputError("eval mode needs running statistics: pass running=RunningStats(mean, var, count)")
    checks.batch(x, axis, gamma=gamma, beta=beta, running=running)
    x = as_float64(x, "x")
    channels = x.shape[channel_axis(x.ndim, axis)]
    g, b = affine(gamma, beta, channels)
    running = _checked_running(running, channels)
    s = inverse_std(running.var, effective_eps(convention, eps), convention.eps_placement)
    return normalize(x, running.mean, s, g, b, axis)


# ---------------------------------------------------------------- backward


@dataclass(frozen=True)
class Gradients:
    """dL/dx, dL/dgamma, dL/dbeta for an upstream gradient dy = dL/dy.

    dgamma and dbeta are the gradients with respect to the scale and shift the output was computed
    with (1 and 0 when the API has no affine parameters).
    """

    dx: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray


def check_dy(dy, x: np.ndarray) -> np.ndarray:
    dy = as_float64(dy, "dy")
    if dy.shape != x.shape:
        raise InputError(f"dy has shape {dy.shape}, expected {x.shape}: the shape of x")
    return dy


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def backward_train(dy, x, gamma=None, *, convention: Convention, axis: int, eps: float) -> Gradients:
    """Gradients through the batch statistics.

    With V = k * var (k = 1 biased, n/(n-1) Bessel-corrected) and s = s(V):
        dx = gamma * s * (dy - mean(dy)) + gamma * s'(V) * (2k/n) * (x - mean) * sum(dy * (x - mean))
    which for the usual V = var, s = (var + eps)**-1/2 is gamma * s * (dy - mean(dy) - xhat * mean(dy * xhat)).
    It is evaluated with xhat = (x - mean) * s and s'(V) / s**2, so that values near the format's largest give
    no overflowing sum(dy * (x - mean)) nor an underflowing s**3.
    An empty batch (n = 0) has an empty dx and dgamma = dbeta = 0, empty sums (SPEC.md section 5, empty-batch).
    """
    _check_convention(convention)
    checks.batch(x, axis, gamma=gamma, dy=dy)
    x = as_float64(x, "x")
    dy = check_dy(dy, x)
    channels = x.shape[channel_axis(x.ndim, axis)]
    g, _ = affine(gamma, None, channels)
    if x.size == 0:
        return Gradients(np.zeros_like(x), np.zeros(channels), np.zeros(channels))
    stats = batch_stats(x, axis)
    n = stats.count
    k = variance_factor(convention.normalize_with, n, convention.bessel_divisor_min)
    var = k * stats.var
    e = effective_eps(convention, eps)
    s = inverse_std(var, e, convention.eps_placement)
    h = inverse_std_derivative_over_square(var, e, convention.eps_placement)
    b = partial(broadcast, ndim=x.ndim, axis=axis)
    xhat = (x - b(stats.mean)) * b(s)
    dy_rows, xhat_rows = channels_first(dy, axis), channels_first(xhat, axis)
    sum_dy = dy_rows.sum(axis=1)
    sum_dy_xhat = (dy_rows * xhat_rows).sum(axis=1)
    dx = (b(s) * (dy - b(sum_dy / n)) + b(h * (2.0 * k / n) * sum_dy_xhat) * xhat) * b(g)
    return Gradients(dx, sum_dy_xhat, sum_dy)


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def backward_eval(
    dy, x, gamma=None, running: RunningStats = None, *, convention: Convention, axis: int, eps: float
) -> Gradients:
    """Gradients with the running statistics held constant: dx = dy * gamma * s(running.var)."""
    _check_convention(convention)
    if running is None:
        raise InputError("eval mode needs running statistics: pass running=RunningStats(mean, var, count)")
    checks.batch(x, axis, gamma=gamma, dy=dy, running=running)
    x = as_float64(x, "x")
    dy = check_dy(dy, x)
    channels = x.shape[channel_axis(x.ndim, axis)]
    g, _ = affine(gamma, None, channels)
    running = _checked_running(running, channels)
    s = inverse_std(running.var, effective_eps(convention, eps), convention.eps_placement)
    xhat = normalize(x, running.mean, s, np.ones(channels), np.zeros(channels), axis)
    b = partial(broadcast, ndim=x.ndim, axis=axis)
    return Gradients(
        dy * b(s) * b(g),
        channels_first(dy * xhat, axis).sum(axis=1),
        channels_first(dy, axis).sum(axis=1),
    )
