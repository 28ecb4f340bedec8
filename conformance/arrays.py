"""Input arrays for batch-norm checks, in plain NumPy (no Hypothesis): per-channel moments, rounding to a format."""

import numpy as np


def values_with_moments(shape, axis: int, means, stds, seed: int, dtype: str = "float64") -> np.ndarray:
    """x = mean + std * z per channel, z ~ N(0, 1) from `seed`, rounded to `dtype`."""
    z = np.random.default_rng(seed).standard_normal(shape)
    bshape = [1] * len(shape)
    bshape[axis % len(shape)] = -1
    x = np.reshape(means, bshape) + np.reshape(stds, bshape) * z
    return round_to(x, dtype)


def round_to(x, dtype: str) -> np.ndarray:
    """x rounded to `dtype` (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(x).astype(ml_dtypes.bfloat16)
    return np.asarray(x).astype(dtype)
