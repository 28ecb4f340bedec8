"""Hypothesis strategies for batch-norm inputs: shapes, conditioning, parameters.

Values are drawn per channel as x = mean + std * z, with the conditioning |mean|/std drawn explicitly
(log-uniform up to `max_log10_condition`), the scale drawn over many decades, and constant channels
(std = 0) included. z comes from a NumPy generator seeded by a drawn integer, so large inputs stay
cheap while the parameters that matter (shape, mean, std, eps, momentum) shrink to simple values.
"""

import functools

import numpy as np
from hypothesis import strategies as st

from .arrays import round_to, values_with_moments  # noqa: F401  (re-exported for tests)

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")


@st.composite
def shapes(draw, ranks=(2, 3, 4, 5), max_batch: int = 8, max_channels: int = 4, max_spatial: int = 5, max_size: int = 4096,
           max_reduction: int = 0):
    """Input shapes (N, C, *spatial), logical NCHW order: batch from 1, spatial dims of 1 included.

    With `max_reduction` > `max_size`, one draw in eight is a long reduction of `max_size` < n <=
    `max_reduction` values per channel over one or two channels, where summation error grows with n and
    blocked or pairwise orders start to matter (the conformance cases turn this on)."""
    rank = draw(st.sampled_from(ranks))
    if max_reduction > max_size and draw(st.integers(0, 7)) == 7:
        length = int(10.0 ** draw(st.floats(np.log10(max_size + 1), np.log10(max_reduction))))
        c = draw(st.integers(1, 2))
        if rank == 2:
            return (length, c)
        n = draw(st.integers(1, max_batch))
        return (n, c, -(-length // n), *[1] * (rank - 3))
    n = draw(st.integers(1, max_batch))
    c = draw(st.integers(1, max_channels))
    spatial = draw(st.lists(st.integers(1, max_spatial), min_size=rank - 2, max_size=rank - 2))
    shape = (n, c, *spatial)
    if int(np.prod(shape)) > max_size:
        shape = (n, c, *[1] * len(spatial))
    return shape


# The shapes backend cases draw from (logical (N, C, *spatial)): a fixed vocabulary, not free integers. A
# JIT-compiled backend (JAX, Keras on JAX) compiles a program per input shape, 0.1 to 1 s on a CPU; with free dims
# almost every example of every run is a new one, with these the programs are a bounded set that the persistent
# compilation cache (adapters/jax_cache.py) holds after warm-up, and a long run meets its shapes again in memory.
# Each rank has what the spec needs: one value per channel (the first: eval only, training cases get a batch of 2),
# a batch of one with several values per channel (rank > 2), one channel, dims of 1, values per channel n odd,
# prime, powers of two and one past one, above 16 every remainder of n mod 8, up to n = 1024 within 2048 values; one
# draw in eight is a long reduction instead (`LONG_REDUCTIONS`). Simplest first: Hypothesis shrinks to the front.
# `shapes` (free dims) stays for the oracle's own tests, where no compilation is at stake.
SHAPE_VOCABULARY = {
    2: ((1, 3), (2, 1), (3, 4), (5, 2), (7, 3), (8, 1), (16, 4), (17, 2), (42, 1), (67, 3), (100, 2), (133, 1),
        (255, 2), (510, 4), (512, 4)),
    3: ((1, 2, 1), (1, 3, 7), (2, 1, 5), (3, 4, 1), (4, 2, 3), (5, 3, 2), (2, 2, 8), (2, 4, 9), (4, 3, 5), (1, 2, 21),
        (1, 4, 23), (2, 3, 47), (16, 1, 8), (3, 2, 43), (7, 3, 37), (16, 2, 64)),
    4: ((1, 4, 1, 1), (1, 2, 3, 5), (2, 1, 2, 2), (3, 3, 1, 4), (2, 2, 3, 3), (4, 2, 5, 1), (1, 1, 5, 5), (1, 3, 3, 9),
        (2, 2, 1, 15), (2, 4, 4, 4), (1, 1, 1, 31), (16, 3, 2, 2), (8, 4, 4, 4), (3, 2, 5, 9), (7, 3, 7, 5),
        (16, 2, 8, 8)),
    5: ((1, 1, 1, 1, 1), (1, 3, 2, 3, 2), (2, 1, 3, 1, 2), (3, 2, 1, 1, 5), (2, 4, 2, 2, 2), (1, 2, 3, 3, 2),
        (1, 2, 1, 1, 23), (1, 3, 1, 5, 5), (3, 1, 1, 3, 3), (2, 2, 1, 3, 5), (1, 2, 1, 3, 7), (5, 3, 1, 5, 4),
        (4, 2, 3, 3, 3), (3, 1, 5, 5, 5), (8, 2, 4, 4, 4), (3, 4, 5, 5, 5), (16, 2, 4, 4, 4)),
}
# long reductions: values per channel (odd, 2**13 + 1, 2**16) over one or two channels, rank > 2 with a batch of
# 1, 3 or 16 and the rest in the first spatial dim
LONG_REDUCTIONS, LONG_BATCHES = (3001, 8193, 65536), (1, 3, 16)


@st.composite
def vocabulary_shapes(draw, ranks=(2, 3, 4, 5), max_size: int = 2048, max_reduction: int = 0):
    """A shape (N, C, *spatial) of `SHAPE_VOCABULARY` of one of `ranks`, of at most `max_size` values; with
    `max_reduction` > `max_size`, one draw in eight a long reduction of `max_size` < n <= `max_reduction`
    values per channel from `LONG_REDUCTIONS` over one or two channels (where summation error grows with n and
    blocked or pairwise orders start to matter), as `shapes` draws them."""
    rank = draw(st.sampled_from(tuple(ranks)))
    lengths = tuple(n for n in LONG_REDUCTIONS if max_size < n <= max_reduction)
    if lengths and draw(st.integers(0, 7)) == 7:
        length, c = draw(st.sampled_from(lengths)), draw(st.integers(1, 2))
        if rank == 2:
            return (length, c)
        n = draw(st.sampled_from(LONG_BATCHES))
        spatial = -(-length // n) if n * -(-length // n) <= max_reduction else length // n
        return (n, c, spatial, *[1] * (rank - 3))
    return draw(_fitting(rank, max_size))


@functools.lru_cache(maxsize=None)
def _fitting(rank: int, max_size: int):
    """The vocabulary's shapes of `rank` of at most `max_size` values (the simplest when none is), as one strategy:
    strategies are built once per argument, not per draw (what Hypothesis validates on first use)."""
    return st.sampled_from(tuple(s for s in SHAPE_VOCABULARY[rank] if int(np.prod(s)) <= max_size)
                           or (SHAPE_VOCABULARY[rank][0],))


def channel_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """(N, C, *spatial) -> (N, *spatial, C)."""
    return (shape[0], *shape[2:], shape[1])


@st.composite
def layouts(draw, shape: tuple[int, ...]):
    """(shape, axis): the channel axis at 1 (NCHW), last (NHWC), or anywhere else."""
    kind = draw(_LAYOUT_KINDS)
    if kind == "first" or len(shape) == 2:
        return shape, 1
    if kind == "last":
        return channel_last(shape), -1
    axis = draw(st.integers(0, len(shape) - 1))
    moved = list(shape)
    moved.insert(axis, moved.pop(1))
    return tuple(moved), axis


@st.composite
def channel_moments(draw, channels: int, max_log10_condition: float = 4.0, allow_constant: bool = True):
    """Per-channel (mean, std): std log-uniform over 1e-3..1e3, |mean|/std log-uniform up to 10**max_log10_condition."""
    means, stds = [], []
    for _ in range(channels):
        std = 10.0 ** draw(st.floats(-3, 3))
        kind = draw(_MOMENT_KINDS if allow_constant else _NONCONSTANT_KINDS)
        if kind == "unit":
            mean = draw(st.floats(-1, 1)) * std
        else:
            mean = draw(_SIGNS) * std * 10.0 ** draw(st.floats(0, max_log10_condition))
        means.append(mean)
        stds.append(0.0 if kind == "constant" else std)
    return np.array(means), np.array(stds)


@st.composite
def batches(draw, shape, axis: int, dtype: str = "float64", max_log10_condition: float = 4.0, allow_constant: bool = True):
    """An input array of `shape` with per-channel conditioning drawn by `channel_moments`."""
    channels = shape[axis % len(shape)]
    means, stds = draw(channel_moments(channels, max_log10_condition, allow_constant))
    # Keep |mean| + 6 std within half the format's range (same conditioning): Inf inputs are edge cases.
    limit = 0.5 * float(np.finfo(np.float16).max if dtype == "float16" else np.finfo(np.float32).max)
    scale = min(1.0, limit / float(np.max(np.abs(means) + 6 * stds)))
    seed = draw(st.integers(0, 2**32 - 1))
    return values_with_moments(shape, axis, means * scale, stds * scale, seed, dtype)


# Strategies without arguments are built once, here: one built per draw is validated again on each (a tenth of a
# draw's cost), and the draws are the same either way.
_LAYOUT_KINDS = st.sampled_from(("first", "last", "other"))
_MOMENT_KINDS, _NONCONSTANT_KINDS = st.sampled_from(("unit", "offset", "constant")), st.sampled_from(("unit", "offset"))
_SIGNS = st.sampled_from((-1.0, 1.0))
_EPS = st.one_of(st.sampled_from((1e-5, 1e-3)), st.floats(-8, -1).map(lambda e: 10.0**e))
_MOMENTA = st.one_of(st.sampled_from((0.0, 0.1, 0.9, 0.99, 1.0)), st.floats(0, 1))
_AFFINE_ELEMENT = st.one_of(st.just(0.0), st.just(1.0), st.floats(-10, 10, allow_subnormal=False))
_RUNNING_MEAN, _RUNNING_VAR = st.floats(-100, 100), st.floats(-4, 4).map(lambda e: 10.0**e)


def eps_values():
    """eps: the frameworks' defaults, and a log-uniform range around them."""
    return _EPS


def momenta():
    """A momentum in [0, 1], in either convention (the convention decides what it weights)."""
    return _MOMENTA


@st.composite
def affine_params(draw, channels: int):
    """(gamma, beta) with zeros, negatives and a range of scales."""
    gamma = np.array(draw(st.lists(_AFFINE_ELEMENT, min_size=channels, max_size=channels)))
    beta = np.array(draw(st.lists(_AFFINE_ELEMENT, min_size=channels, max_size=channels)))
    return gamma, beta


@st.composite
def running_stats_values(draw, channels: int):
    """Running (mean, variance) vectors: near the initial (0, 1) and arbitrary positive ones."""
    mean = np.array(draw(st.lists(_RUNNING_MEAN, min_size=channels, max_size=channels)))
    var = np.array(draw(st.lists(_RUNNING_VAR, min_size=channels, max_size=channels)))
    return mean, var
