"""Designed inputs for convention inference, and the per-hypothesis predictions they are judged by.

Every input is built from small dyadic numbers, exact in float16 and bfloat16, so that a backend sees exactly
the values the predictions assume. All arrays are float64 NumPy arrays of shape (n, C) placed into a rank-r
tensor by `shaped`: n along axis 0, C along the channel axis, 1 elsewhere.
"""

from dataclasses import fields, replace

import numpy as np

from ..spec.oracle import channels_first
from .arrays import round_to

# one channel per variance for the eps probes: 0 (eval) or nearly 0 (train) first, then growing
EPS_PROBE_VARS = 4.0 ** -np.array([np.inf, 10, 7, 4, 0])
EPS_TRAIN_HALF_RANGE = 2.0 ** -np.array([12, 10, 7, 4, 0])  # train fallback: values +-a, biased variance a**2
MOMENTUM_ROWS = np.array([[1.0, 2.0], [2.0, 6.0], [4.0, 7.0], [5.0, 9.0]])  # n = 4 per channel
RUNNING_START = (8.0, 16.0)  # (mean, variance), far from every batch's
for _constant in (EPS_PROBE_VARS, EPS_TRAIN_HALF_RANGE, MOMENTUM_ROWS):
    _constant.flags.writeable = False  # shared by every probe: nothing may change them


def fresh(request):
    """`request` (a dataclass) with its own copy of every array: a backend given it can write into nothing
    another call, the probe log or this module's constants use."""
    return replace(request, **{f.name: np.array(getattr(request, f.name)) for f in fields(request)
                               if isinstance(getattr(request, f.name), np.ndarray)})


def shaped(rows: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """rows (n, C) as a rank-`rank` array: n on axis 0, C on the channel `axis`, size 1 elsewhere."""
    arr = np.asarray(rows, dtype=np.float64).reshape(rows.shape + (1,) * (rank - 2))
    return np.ascontiguousarray(np.moveaxis(arr, 1, axis % rank))


def per_channel(a: np.ndarray, axis: int) -> np.ndarray:
    """a (any rank) as rows (n, C) again: the inverse of `shaped`."""
    return channels_first(np.asarray(a, dtype=np.float64), axis).T


def axis_probe_input(rank: int) -> np.ndarray:
    """Integers below 64 whose slice means differ along every axis (each axis adds its own offset pattern)."""
    shape = (4, 3, 5, 2, 3)[:rank]
    idx = np.indices(shape)
    offsets = sum(((k + 2) * idx[k] * (1 + (k % 2) * idx[k])) for k in range(rank))
    noise = sum((3 * k + 1) * idx[k] for k in range(rank)) % 5
    return (offsets + noise).astype(np.float64)


def normalized_over(x: np.ndarray, axis: int, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) with statistics over every axis but `axis` (biased variance)."""
    others = tuple(k for k in range(x.ndim) if k != axis % x.ndim)
    mean = x.mean(axis=others, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=others, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def inverse_std(var, eps: float, inside: bool):
    return 1.0 / np.sqrt(var + eps) if inside else 1.0 / (np.sqrt(var) + eps)


def eps_estimate(s0: float, v0: float, inside: bool) -> float:
    """The eps that gives inverse std s0 at variance v0 under either placement."""
    return 1.0 / s0**2 - v0 if inside else 1.0 / s0 - np.sqrt(v0)


def long_channel(dtype: str, n: int = 65536) -> np.ndarray:
    """n values 1 - 2**-4 and 1 - 2**-3 alternating, shape (n, 1): a naive half-precision sum stagnates (at 2048
    in float16, 256 in bfloat16: each value is less than half the spacing there), a float32 one is exact."""
    return (1.0 - 2.0**-4 * (1 + np.arange(n) % 2)).reshape(n, 1)


def half_accumulated_y(rows: np.ndarray, dtype: str, eps: float) -> np.ndarray:
    """y from statistics summed element by element in `dtype` (two-pass), what naive half accumulation gives."""
    h = round_to(rows[:, 0], dtype)
    n = rows.shape[0]  # divided in float64: 65536 itself overflows float16
    mean = float(round_to(float(np.add.accumulate(h)[-1]) / n, dtype))
    d = round_to(rows[:, 0] - mean, dtype)
    var = float(np.add.accumulate(round_to(d.astype(np.float64) ** 2, dtype))[-1]) / n
    return ((rows[:, 0] - mean) / np.sqrt(var + eps)).reshape(-1, 1)


def relative_residual(measured, predicted) -> float:
    """max |measured - predicted| / max |predicted| (inf where the backend returned non-finite values)."""
    measured, predicted = np.asarray(measured, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if not np.all(np.isfinite(measured)):
        return float("inf")
    scale = max(float(np.max(np.abs(predicted))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(measured - predicted)) / scale)
