"""Translating batch-norm parameters between conventions, and what no parameter can make equal.

`translate(source, target, momentum=0.1, eps=1e-5)` returns the target API's parameters that compute
the same thing as closely as possible (PyTorch momentum 0.1 -> Keras momentum 0.9), and the residual
differences that remain, each with its size for a given batch.
"""

from dataclasses import dataclass
from enum import Enum

import numpy as np

from .conventions import Convention, MomentumStyle, new_batch_weight


class ResidualKind(Enum):
    RUNNING_VARIANCE_ESTIMATOR = "running variance estimator"
    NORMALIZING_VARIANCE = "normalizing variance"
    EPS_PLACEMENT = "eps placement"
    EPS_CLAMP = "eps clamp"
    CUMULATIVE_AVERAGE = "cumulative average"
    ZERO_DEBIAS = "zero-debiasing"
    NO_RUNNING_STATS = "no running statistics"
    BESSEL_DIVISOR = "Bessel divisor floor"


@dataclass(frozen=True)
class Residual:
    """A difference the translated parameters cannot remove."""

    kind: ResidualKind
    affects: tuple[str, ...]  # quantities that differ
    explanation: str


@dataclass(frozen=True)
class Translation:
    source: Convention
    target: Convention
    momentum: float | None  # in the target's convention; None where the target has none to set
    eps: float | None
    axis: int
    residuals: tuple[Residual, ...]
    momentum_weight: float | None  # w, the weight on the new batch both sides apply

    def residual_size(self, residual: Residual, n: int, var: float = 1.0, steps: int = 1) -> float | None:
        """Relative size of `residual` for a batch of n values per channel with batch variance `var`,
        after `steps` training steps; None where it depends on the whole sequence of batches."""
        return _size(self, residual, n, var, steps)


_UNSET = object()


def translate(source: Convention, target: Convention, *, momentum=_UNSET, eps: float | None = None, axis: int | None = None) -> Translation:
    """Target parameters equivalent to `source` called with (momentum, eps, axis); defaults are the source's."""
    momentum = source.default_momentum if momentum is _UNSET else momentum
    eps = source.default_eps if eps is None else eps
    axis = source.channel_axis if axis is None else axis
    if eps is not None and not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    residuals: list[Residual] = []
    target_momentum = weight = None
    both_track = source.tracks_running_stats and target.tracks_running_stats
    if source.tracks_running_stats and not target.tracks_running_stats:
        residuals.append(Residual(ResidualKind.NO_RUNNING_STATS, ("running_mean", "running_var"),
                                  f"{target.api} keeps no running statistics: the caller must average them itself."))
    if target.tracks_running_stats and not source.tracks_running_stats:
        residuals.append(Residual(ResidualKind.NO_RUNNING_STATS, ("running_mean", "running_var"),
                                  f"{source.api} keeps no running statistics: turn {target.api}'s off "
                                  "(e.g. track_running_stats=False) or ignore them."))
    if both_track and momentum is None:
        if not source.cumulative_average:
            raise ValueError(f"{source.api} needs a numeric momentum: None is not a cumulative average there"
                             + (" and its record has no default" if source.default_momentum is None else ""))
        if target.cumulative_average:
            target_momentum = None
        else:
            residuals.append(Residual(ResidualKind.CUMULATIVE_AVERAGE, ("running_mean", "running_var"),
                                      f"{source.api} with momentum=None averages all batches equally (weight 1/t); "
                                      f"{target.api} has no cumulative average: set its momentum to "
                                      f"{'1/t' if target.momentum_style is MomentumStyle.NEW_WEIGHT else '1 - 1/t'} before step t."))
    elif both_track:
        if not (isinstance(momentum, (int, float)) and np.isfinite(momentum)):
            raise ValueError(f"momentum must be a finite number or None, got {momentum!r}")
        weight = new_batch_weight(source, momentum)
        target_momentum = new_batch_weight(target, weight)
    if both_track and source.bessel_divisor_min != target.bessel_divisor_min:
        residuals.append(Residual(ResidualKind.BESSEL_DIVISOR, ("running_var",),
                                  "the Bessel divisor is floored differently (max(n - 1, "
                                  f"{source.bessel_divisor_min}) vs max(n - 1, {target.bessel_divisor_min})): "
                                  "with one value per channel one side's running variance is NaN, the other's finite."))
    if both_track and source.running_var is not target.running_var:
        residuals.append(Residual(ResidualKind.RUNNING_VARIANCE_ESTIMATOR, ("running_var",),
                                  f"{source.api} averages the {source.running_var.value} batch variance, "
                                  f"{target.api} the {target.running_var.value} one: every update differs by the factor "
                                  "n/(n-1) on the batch variance."))
    if both_track and source.zero_debias != target.zero_debias:
        residuals.append(Residual(ResidualKind.ZERO_DEBIAS, ("running_mean", "running_var"),
                                  "one side zero-debiases its moving averages: the other keeps the weight (1-w)**t "
                                  "on the initial values (mean 0, variance 1) after t steps."))
    if source.normalize_with is not target.normalize_with:
        residuals.append(Residual(ResidualKind.NORMALIZING_VARIANCE, ("y", "dx"),
                                  f"training output normalized with the {source.normalize_with.value} vs the "
                                  f"{target.normalize_with.value} variance: a factor sqrt(n/(n-1)) on x - mean."))
    if source.eps_placement is not target.eps_placement:
        residuals.append(Residual(ResidualKind.EPS_PLACEMENT, ("y", "dx", "saved_invstd"),
                                  f"eps {source.eps_placement.value.replace('_', ' ')} vs "
                                  f"{target.eps_placement.value.replace('_', ' ')}."))
    if eps is not None and target.eps_min > max(eps, source.eps_min):
        residuals.append(Residual(ResidualKind.EPS_CLAMP, ("y", "dx", "saved_invstd"),
                                  f"{target.api} clamps eps to at least {target.eps_min:g}, above the {eps:g} asked for."))
    return Translation(source, target, target_momentum, eps, axis, tuple(residuals), weight)


def _size(t: Translation, residual: Residual, n: int, var: float, steps: int) -> float | None:
    kind = residual.kind
    if kind is ResidualKind.RUNNING_VARIANCE_ESTIMATOR:
        # The batch term of every update differs by n/(n-1); relative to the biased one that is 1/(n-1),
        # which the running variance approaches as the initial value decays.
        return 1.0 / (n - 1) if n > 1 else float("inf")
    if kind is ResidualKind.NORMALIZING_VARIANCE:
        return float(np.sqrt(n / (n - 1)) - 1.0) if n > 1 else float("inf")
    if kind is ResidualKind.EPS_PLACEMENT:
        eps = t.eps or 0.0
        return float(abs((np.sqrt(var) + eps) / np.sqrt(var + eps) - 1.0))
    if kind is ResidualKind.EPS_CLAMP:
        eps = t.eps or 0.0
        return float(np.sqrt((var + t.target.eps_min) / (var + eps)) - 1.0)
    if kind is ResidualKind.ZERO_DEBIAS and t.momentum_weight is not None:
        return float((1.0 - t.momentum_weight) ** steps)
    return None

