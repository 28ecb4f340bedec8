"""Input arrays for batch-norm checks, in plain NumPy (no Hypothesis): per-channel moments, rounding to a format."""

import numpy as np


def values_with_moments(shape, axis: int, means, stds, seed: int, dtype: str = "float64") -> np.ndarray:
    """x = mean + std * z per channel, z ~ N(0, 1) from `seed`, rounded to `dtype`."""
    z = np.random.default_rng(seed).standard_normal(shape)
    bshape = [1] * len(shape)
    bshape[axis % len(shape)] = -1
    x = np.reshape(means, bshape) + np.reshape(stds, bshape) * z
    return round_to(x, dtype)


def numpy_format(dtype: str):
    """The NumPy dtype of a format name: bfloat16 through ml_dtypes (imported on first use, about 0.5 s once per
    process: the battery asks before it starts a cell's clock, battery.run_cell)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype)


def round_to(x, dtype: str) -> np.ndarray:
    """x rounded to `dtype`."""
    return np.asarray(x).astype(numpy_format(dtype))
