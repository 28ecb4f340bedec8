"""Hypothesis strategies for whole cases: inputs shaped and parameterized for one backend and mode.

A `Plan` fixes what one example must contain: affine parameters on or off, running statistics on or off,
whether channel 0 of x is standardized (well-conditioned), and whether (and how) x carries non-finite or extreme
values. The battery gives every example a plan by its index (`plan_for`), so each (affine x running) combination
the backend and mode allow is drawn a guaranteed number of times, half of them (rounded up) with a channel sure to
be judged, and one example in `NONFINITE_SHARE` carries non-finite input; a plan leaves the choices Hypothesis
makes unchanged (every parameter is drawn whatever the plan), so the same draws under another plan are consistent.
"""

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from ..adapters.protocol import channel_axes
from ..spec import Inputs, Mode, RunningStats
from ..spec.error_model import precision_for, split_layout
from ..spec.formats import float_format
from . import strategies as bst

TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)

# what a non-finite example puts into one channel of x: NaN, +Inf or -Inf in a few elements, or every value of
# the channel rescaled to the format's limits (magnitudes close to its largest value, or subnormal ones)
SPECIAL_KINDS, EXTREME_KINDS = ("nan", "+inf", "-inf"), ("huge", "tiny")
NONFINITE_KINDS = SPECIAL_KINDS + EXTREME_KINDS
NONFINITE_SHARE = 8  # one example in eight carries non-finite or extreme input;
NONFINITE_FIRST = 3  # the first at index 3 (a run of 4 or 5 examples, the default, has one)
_SPECIAL = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}


@dataclass(frozen=True)
class Plan:
    """What one example must contain; None: drawn (affine, running) or none (nonfinite)."""

    affine: bool | None = None
    running: bool | None = None
    nonfinite: str | None = None  # one of NONFINITE_KINDS
    standardized: bool = False  # channel 0 of x with mean 0 and variance 1 (well-conditioned): sure to be judged

    @property
    def label(self) -> str:
        """The (affine, running) combination as reports show it: "affine on, running off"."""
        return combination_label(bool(self.affine), bool(self.running))


def combination_label(affine: bool, running: bool) -> str:
    return f"affine {'on' if affine else 'off'}, running {'on' if running else 'off'}"


def running_choices(backend, mode: Mode) -> tuple[bool, ...]:
    """Running statistics off, on, or both: on only where the convention tracks them, and always in an eval
    mode whose convention has no batch-statistics eval."""
    conv = backend.convention
    if not conv.tracks_running_stats:
        return (False,)
    if mode not in TRAINING and not conv.untracked_eval_uses_batch_stats:
        return (True,)
    return (False, True)


def combinations(backend, mode: Mode) -> list[tuple[bool, bool]]:
    """The (affine, running) pairs `backend` allows in `mode`, in a fixed order."""
    return [(affine, running) for running in running_choices(backend, mode) for affine in (False, True)]


def least_per_combination(examples: int, backend, mode: Mode) -> int:
    """The examples every combination is guaranteed: the round-robin gives each floor(examples / pairs)."""
    return examples // len(combinations(backend, mode))


def least_standardized_per_combination(examples: int, backend, mode: Mode) -> int:
    """The examples of every combination with channel 0 standardized (every other round, from the first): at least
    ceil(least_per_combination / 2), 1 of 8 and 3 of 20 with four combinations."""
    return -(-least_per_combination(examples, backend, mode) // 2)


def nonfinite_at(index: int) -> bool:
    """Whether example `index` carries non-finite input: one in every block of NONFINITE_SHARE examples, at
    NONFINITE_FIRST in the first block and one earlier in each next one (3, 10, 17, 24, ...), so that it falls on
    every combination of a 1-, 2- or 4-way round-robin."""
    return (index + index // NONFINITE_SHARE) % NONFINITE_SHARE == NONFINITE_FIRST


def nonfinite_count(examples: int) -> int:
    """How many of the first `examples` examples carry non-finite input (one per NONFINITE_SHARE, from index 3)."""
    return sum(nonfinite_at(i) for i in range(examples))


def nonfinite_kind(j: int, offset: int = 0) -> str:
    """The kind of a cell's j-th non-finite example: NaN or an infinity and values at the format's limits in turn
    (a cell with two non-finite examples has one of each), which of them first and where each list starts set by
    `offset` (a per-cell number), so that cells with a single one cover every kind between them."""
    kinds = SPECIAL_KINDS if (j + offset) % 2 == 0 else EXTREME_KINDS
    return kinds[(offset // 2 + j // 2) % len(kinds)]


def plan_for(index: int, combos: list[tuple[bool, bool]], offset: int = 0) -> Plan:
    """Example `index`'s plan: the combinations round-robin; channel 0 standardized in every other round, from the first
    (so that ill-conditioning, frequent in half precision, leaves each combination judged examples); one example
    in NONFINITE_SHARE non-finite (`nonfinite_at`), of the kind `nonfinite_kind` gives (`offset`, a per-cell
    number, varies it across cells)."""
    affine, running = combos[index % len(combos)]
    kind = nonfinite_kind(index // NONFINITE_SHARE, offset) if nonfinite_at(index) else None
    return Plan(affine, running, kind, standardized=(index // len(combos)) % 2 == 0)


def standardized(x: np.ndarray, axis: int, dtype: str) -> np.ndarray:
    """x with channel 0 standardized, in `dtype`: (x - mean) / std there (a constant channel: +-1 in turn), so
    that its mean is about 0 and its variance 1 whatever conditioning and scale were drawn."""
    x = np.array(x, dtype=np.float64)
    first = np.moveaxis(x, axis, 0)[0]  # a view: writes land in x
    std = first.std()
    if std > 0:
        first[...] = (first - first.mean()) / std
    else:
        first[...] = np.where(np.arange(first.size) % 2 == 0, 1.0, -1.0).reshape(first.shape)
    return np.asarray(bst.round_to(x, dtype), dtype=np.float64)


def _move_channels(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """(N, C, *spatial) with C moved to position `axis`."""
    dims = list(shape)
    c = dims.pop(1)
    dims.insert(axis % len(shape), c)
    return tuple(dims)


def extreme_magnitude(kind: str, dtype: str, n: int, alone: bool = False, gain: float = 1.0) -> float:
    """The largest |x| of a channel of n values rescaled to the format's limits. "tiny": in the subnormal range (a
    quarter of the smallest normal number). "huge": close to the largest value while every intermediate of an
    admitted algorithm but the squares stays within the arithmetic's range: n values times `gain` (the largest
    |gamma| / sqrt(eps), what the folded form x * gamma * s multiplies x by) times 8 (|dy| in sums of dy * z) stay
    below it. The variance may then overflow (its model says so, and that channel's output has no bound);
    `alone` (x has no other channel): the largest whose variance v keeps n v and v**-3/2 (the cube of 1/std that
    gradients use) normal in the arithmetic, so that the example keeps elements with a bound."""
    fmt = float_format(dtype)
    if kind == "tiny":
        return 2.0 ** fmt.min_exponent / 4
    compute = float_format(precision_for(dtype).compute)
    if alone:
        variance = min(compute.max_value / max(n, 1), 2.0 ** (-2 * compute.min_exponent / 3))
        return min(fmt.max_value / 2, float(np.sqrt(variance)) / 4)
    return min(fmt.max_value / 2, compute.max_value / (8 * max(n, 1) * max(gain, 1.0)))


@np.errstate(all="ignore")
def with_nonfinite(x: np.ndarray, axis: int, dtype: str, kind: str, channel: int, seed: int,
                   gain: float = 1.0) -> np.ndarray:
    """x with channel `channel` made non-finite: NaN/+Inf/-Inf in one to three of its elements (positions from
    `seed`), or all of its values rescaled (same shape and conditioning; a constant channel made "huge" gets
    values from `seed` first) to `extreme_magnitude`, in `dtype`."""
    x = np.array(x, dtype=np.float64)
    view = np.moveaxis(x, axis, 0)[channel]  # a view: writes land in x
    flat = view.reshape(-1)
    rng = np.random.default_rng(seed)
    if kind in _SPECIAL:
        count = min(flat.size, 1 + int(rng.integers(0, 3)))
        flat[rng.choice(flat.size, size=count, replace=False)] = _SPECIAL[kind]
    else:
        if kind == "huge" and flat.size > 1 and np.ptp(flat) == 0:
            # a constant channel near the largest value is all rounding (a mean one ulp off squares past the
            # range, where the exact variance is 0): it gets a spread from the seed, its variance then overflows
            flat[:] = rng.standard_normal(flat.size)
        peak = float(np.max(np.abs(flat))) if flat.size else 0.0
        target = extreme_magnitude(kind, dtype, flat.size, alone=x.shape[axis] == 1, gain=gain)
        flat[:] = flat * (target / peak) if peak > 0 else target
    view[...] = flat.reshape(view.shape)
    return np.asarray(bst.round_to(x, dtype), dtype=np.float64)


@st.composite
def case_inputs(draw, backend, mode: Mode, dtype: str = "float64", max_size: int = 2048, max_reduction: int = 1 << 16,
                plan: Plan = Plan()):
    """Inputs `backend` accepts for `mode`: its ranks (shapes from `strategies.SHAPE_VOCABULARY`, a bounded set a
    JIT-compiling backend's program cache can hold) and channel axes, affine on or off, running statistics
    (required in eval unless the convention then uses batch statistics), momentum in its own convention (None where it means a cumulative average).

    Training cases have at least two values per channel, and values stay within `dtype`'s range: one value
    per channel is an edge case with its own rules. `plan` fixes affine and running (where the mode allows the
    choice), may standardize channel 0 of x (`standardized`) and put non-finite or extreme values into one channel of x
    (`with_nonfinite`); the draws are the same whatever the plan. `dtype` may name a mixed layout ("float16/float32"): x is drawn for its data dtype,
    the parameters as for any other (`engine.prepare` rounds them to the parameter format), so the draws of a
    plain dtype are unchanged."""
    dtype, _ = split_layout(dtype)
    conv = backend.convention
    ranks = tuple(r for r in getattr(backend, "ranks", conv.ranks) if 2 <= r <= 5)
    shape = draw(bst.vocabulary_shapes(ranks=ranks, max_size=max_size, max_reduction=max_reduction))
    batch_stats_possible = mode in TRAINING or conv.untracked_eval_uses_batch_stats
    if batch_stats_possible and int(np.prod(shape)) // shape[1] < 2:
        shape = (2, *shape[1:])
    axis = draw(st.sampled_from(channel_axes(backend)))
    shape = _move_channels(shape, axis)
    c = shape[axis]
    x = np.asarray(draw(bst.batches(shape, axis, dtype, allow_constant=True)), dtype=np.float64)
    affine = _chosen(plan.affine, draw(st.booleans()))
    params = draw(bst.affine_params(c))
    gamma, beta = params if affine else (None, None)
    running = _running(draw, conv, mode, c, plan)
    momentum = draw(bst.momenta())
    cumulative = draw(st.booleans()) if conv.cumulative_average else False
    if cumulative and running is not None:
        momentum = None  # half the cases where momentum=None means the cumulative average
    dy = None
    if mode in BACKWARD:
        dy = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    eps = draw(bst.eps_values())
    channel, seed = draw(st.integers(0, c - 1)), draw(st.integers(0, 2**32 - 1))
    if plan.standardized:
        x = standardized(x, axis, dtype)
    if plan.nonfinite is not None:
        gain = float(np.max(np.abs(gamma), initial=1.0) if affine else 1.0) / np.sqrt(eps)
        x = with_nonfinite(x, axis, dtype, plan.nonfinite, channel, seed, gain)
    return Inputs(x=x, axis=axis, eps=eps, gamma=gamma, beta=beta, running=running, momentum=momentum, dy=dy)


def _chosen(planned: bool | None, drawn: bool) -> bool:
    return drawn if planned is None else planned


def _running(draw, conv, mode: Mode, c: int, plan: Plan) -> RunningStats | None:
    """Running statistics where the convention tracks them: required in an eval mode without batch-statistics
    eval, else as planned (drawn when the plan leaves it open)."""
    if not conv.tracks_running_stats:
        return None
    on = draw(st.booleans())
    mean, var = draw(bst.running_stats_values(c))
    count = draw(st.integers(0, 3))
    needs_running = mode not in TRAINING and not conv.untracked_eval_uses_batch_stats
    return RunningStats(mean, var, count) if needs_running or _chosen(plan.running, on) else None
