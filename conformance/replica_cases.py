"""The distributed cases: how a batch is split over W replicas, as data, and the examples drawn for a cell.

A split pattern fixes the rows (batch-axis length) of every replica's shard at each world size:

    equal                 4 rows each, rank 4 (or the highest of 3, 2 the convention accepts): the usual case
    unequal               6, 2, 7, 3, ... rows (rank 2): a count-weighted combine is exact, an equal-weight one
                          is not
    empty shard           as unequal, replica 1 holding no rows (a data loader's last, short batch)
    one value per replica one row each (rank 2): the global count N = W is what makes the statistics defined
    large |mean|/std      the equal shape, channels offset by 1000, 100 and 10 standard deviations: where a
                          one-pass E[x**2] - E[x]**2 combine loses its digits

World size 1 has only the equal and one-value patterns (the others need two replicas). The shapes are a
bounded vocabulary so that a framework that compiles per shape (JAX, TF) compiles a few times per world
size: equal and large |mean|/std share a shape, unequal and empty shard the same largest shard (an API that
pads shards to one shape and masks them reuses it), one value per replica has its own. Values come from a
NumPy generator seeded by (run seed, backend, world size, pattern, dtype, example index): the same seed gives
the same cases. Shards differ in their means (non-i.i.d. data, as in practice), so a combine that weighs
replicas equally is visibly off. Every value is exactly representable
in the backend's formats (x and dy in the data dtype, gamma, beta and running statistics in the statistics
format, eps and momentum as the backend holds them), so the oracle and the backend see the same numbers;
eps and momentum are the convention's defaults (its own terms), dy is always given (a step is forward and
backward).
"""

import zlib
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..spec import Precision
from ..spec.conventions import Convention, new_batch_weight
from ..spec.oracle import RunningStats
from ..spec.replicas import ShardedInputs
from .arrays import round_to

CHANNELS = 3
DEFAULT_WORLD_SIZES = (1, 2, 3, 4)
_UNEQUAL_ROWS = (6, 2, 7, 3, 8, 4, 5)  # cycled for world sizes beyond 7
LARGE_OFFSETS = (1000.0, -100.0, 10.0)  # |mean|/std per channel of the large-offset pattern
FALLBACK_EPS, FALLBACK_WEIGHT = 1e-5, 0.1  # a convention without defaults: eps, and the weight on the new batch


class Split(Enum):
    """How the batch is split over the replicas."""

    EQUAL = "equal"
    UNEQUAL = "unequal"
    EMPTY = "empty shard"
    ONE_VALUE = "one value per replica"
    LARGE_MEAN = "large |mean|/std"

    def rows(self, world_size: int) -> tuple[int, ...] | None:
        """Rows per replica at `world_size`, or None where the pattern needs more replicas."""
        w = world_size
        if w < 1:
            raise ValueError(f"world size must be at least 1, got {w}")
        if self is Split.EQUAL:
            return (4,) * w
        if self is Split.ONE_VALUE:
            return (1,) * w
        if w == 1:
            return None
        if self is Split.LARGE_MEAN:
            return (4,) * w
        unequal = tuple(_UNEQUAL_ROWS[r % len(_UNEQUAL_ROWS)] for r in range(w))
        return unequal if self is Split.UNEQUAL else (unequal[0], 0, *unequal[2:])

    @property
    def may_refuse(self) -> bool:
        """An API may refuse the request (a ValueError is then "unsupported", not an error): one value per
        channel in training, or an empty batch, are inputs single-device APIs refuse (spec edge cases)."""
        return self in (Split.ONE_VALUE, Split.EMPTY)


SPLITS = tuple(Split)


def splits_at(world_size: int) -> tuple[Split, ...]:
    """The patterns that exist at `world_size`, in order."""
    return tuple(s for s in SPLITS if s.rows(world_size) is not None)


@dataclass(frozen=True)
class Layout:
    """The shape of every shard but its batch length, and the channel axis (in the convention's terms)."""

    inner: tuple[int, ...]  # the shard shape after the batch axis
    axis: int

    def shard_shape(self, rows: int) -> tuple[int, ...]:
        return (rows, *self.inner)


def layout(convention: Convention, split: Split) -> Layout:
    """Rank 2 (rows, C) for the unequal, empty and one-value patterns; `equal` and `large |mean|/std` take the
    highest of rank 4, 3 the convention accepts, its channel axis where the convention puts it (1: NCHW, -1:
    channels last)."""
    rank = 2
    if split in (Split.EQUAL, Split.LARGE_MEAN):
        rank = next((r for r in (4, 3) if r in convention.ranks), 2)
    if rank == 2:
        return Layout((CHANNELS,), 1)
    spatial = (2, 2) if rank == 4 else (3,)
    axis = convention.channel_axis
    last = axis % rank == rank - 1
    return Layout((*spatial, CHANNELS) if last else (CHANNELS, *spatial), -1 if last else 1)


def defaults(convention: Convention) -> tuple[float, float]:
    """(eps, momentum) in the convention's own terms: its defaults (a momentum of weight 0.1 where it has none)."""
    eps = convention.default_eps if convention.default_eps is not None else FALLBACK_EPS
    momentum = convention.default_momentum
    if momentum is None:
        momentum = new_batch_weight(convention, FALLBACK_WEIGHT)
    return eps, momentum


def case_seed(run_seed: int, backend_name: str, world_size: int, split: Split, dtype: str, index: int) -> list[int]:
    """The generator seed of one example (a list: NumPy's SeedSequence mixes it)."""
    key = zlib.crc32(f"{backend_name}|{world_size}|{split.value}|{dtype}".encode())
    return [int(run_seed) & 0xFFFFFFFF, key, index]


def _channel_moments(rng, split: Split) -> tuple[np.ndarray, np.ndarray]:
    std = 10.0 ** rng.uniform(-1, 1, CHANNELS)
    offsets = np.array(LARGE_OFFSETS) if split is Split.LARGE_MEAN else rng.uniform(-2, 2, CHANNELS)
    return offsets * std, std


def _values(rng, shape: tuple[int, ...], axis: int, mean, std) -> np.ndarray:
    b = [1] * len(shape)
    b[axis % len(shape)] = -1
    return np.reshape(mean, b) + np.reshape(std, b) * rng.standard_normal(shape)


def sharded_case(convention: Convention, precision: Precision, split: Split, world_size: int, seed) -> ShardedInputs:
    """One example: shards of x (each replica's shifted by its own offset: non-i.i.d.), dy shards, gamma,
    beta, running statistics, eps and momentum, rounded to what the backend holds (see the module doc)."""
    rows = split.rows(world_size)
    if rows is None:
        raise ValueError(f"the {split.value!r} split needs at least 2 replicas, not {world_size}")
    rng = np.random.default_rng(seed)
    lay = layout(convention, split)
    mean, std = _channel_moments(rng, split)
    shards, dys = [], []
    for r, n in enumerate(rows):
        shift = std * 0.75 * (r - (world_size - 1) / 2)  # each replica's data off the others' by a fraction of std
        x = _values(rng, lay.shard_shape(n), lay.axis, mean + shift, std)
        shards.append(round_to(x, precision.dtype).astype(np.float64))
        dys.append(round_to(rng.standard_normal(x.shape), precision.dtype).astype(np.float64))
    stats = lambda a: round_to(a, precision.stats).astype(np.float64)  # noqa: E731
    gamma, beta = stats(rng.normal(1.0, 0.5, CHANNELS)), stats(rng.normal(0.0, 1.0, CHANNELS))
    running = RunningStats(stats(rng.normal(0.0, 1.0, CHANNELS)), stats(rng.uniform(0.5, 2.0, CHANNELS)),
                           int(rng.integers(0, 3)))
    eps, momentum = defaults(convention)
    return ShardedInputs(shards=tuple(shards), axis=lay.axis, eps=precision.attribute(eps), gamma=gamma, beta=beta,
                         running=running if convention.tracks_running_stats else None,
                         momentum=precision.attribute(momentum), dys=tuple(dys))


def describe(inputs: ShardedInputs) -> str:
    """One line: rows per replica, shard shape, axis, eps, momentum, the largest |mean|/std of the batch."""
    x = np.concatenate(inputs.shards, axis=0)
    axis = inputs.axis % x.ndim
    rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    std = rows.std(axis=1)
    kappa = float(np.max(np.abs(rows.mean(axis=1)) / np.where(std > 0, std, np.inf))) if rows.size else 0.0
    inner = tuple(np.shape(inputs.shards[0])[1:])
    return (f"rows={list(inputs.rows)} shard=(rows, {', '.join(map(str, inner))}) axis={inputs.axis} "
            f"eps={inputs.eps:.3g} momentum={inputs.momentum} max|mean|/std={kappa:.3g}")


__all__ = ["CHANNELS", "DEFAULT_WORLD_SIZES", "LARGE_OFFSETS", "Layout", "SPLITS", "Split", "case_seed", "defaults",
           "describe", "layout", "sharded_case", "splits_at"]
