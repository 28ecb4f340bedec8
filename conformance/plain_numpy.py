"""Deliberately plain batch-norm implementations in a working precision, to test the error model.

`train` / `backward` compute in `compute` (float32 by default; float16 and bfloat16 too, through ml_dtypes)
from inputs of any float dtype, sum in `accumulate` (default: `compute`), and round y and dx to the input
dtype, like a framework kernel would. Switches reproduce known mistakes (eps outside the root, the wrong
variance estimator, momentum the wrong way round, terms of the backward left out) and the unstable one-pass
variance, so that tests can check the error model tells them from rounding noise and the diagnosis names them.
"""

import numpy as np

from .arrays import numpy_format, round_to


def _rows(a, axis):
    return np.ascontiguousarray(np.moveaxis(a, axis, 0)).reshape(a.shape[axis], -1)


def _b(v, ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def _mean(rows, at: np.dtype, ct: np.dtype):
    """Per-row mean, summed in the accumulator dtype `at`, divided in `ct`."""
    return rows.sum(axis=1, dtype=at).astype(ct) / ct.type(rows.shape[1])


@np.errstate(all="ignore")  # overflow and NaN are part of what the tests probe
def train(
    x,
    gamma,
    beta,
    running_mean,
    running_var,
    *,
    axis,
    eps,
    new_weight,
    compute="float32",
    accumulate=None,
    one_pass=False,
    eps_outside=False,
    running_unbiased=True,
    momentum_reversed=False,
    unbiased_normalization=False,
):
    """Training forward in `compute`, sums in `accumulate`; returns a dict of the quantities a framework would
    return (saved_var: the variance normalized with)."""
    ct = numpy_format(compute)
    at = numpy_format(accumulate or compute)
    xc = np.asarray(x).astype(ct)
    rows = _rows(xc, axis)
    n = ct.type(rows.shape[1])
    mean = _mean(rows, at, ct)
    if one_pass:
        var = _mean(rows * rows, at, ct) - mean * mean
    else:
        d = rows - mean[:, None]
        var = _mean(d * d, at, ct)
    if unbiased_normalization:
        var = var * n / (n - ct.type(1))
    e = ct.type(eps)
    invstd = ct.type(1) / (np.sqrt(var) + e) if eps_outside else ct.type(1) / np.sqrt(var + e)
    g, bt = np.asarray(gamma).astype(ct), np.asarray(beta).astype(ct)
    y = _b(g, x.ndim, axis) * (xc - _b(mean, x.ndim, axis)) * _b(invstd, x.ndim, axis) + _b(bt, x.ndim, axis)
    w = ct.type(1 - new_weight if momentum_reversed else new_weight)
    biased = var * (n - ct.type(1)) / n if unbiased_normalization else var
    batch_var = biased * n / (n - ct.type(1)) if running_unbiased else biased
    return {
        "y": round_to(y, np.asarray(x).dtype.name),
        "saved_mean": mean,
        "saved_var": var,
        "saved_invstd": invstd,
        "running_mean": (ct.type(1) - w) * np.asarray(running_mean).astype(ct) + w * mean,
        "running_var": (ct.type(1) - w) * np.asarray(running_var).astype(ct) + w * batch_var,
    }


@np.errstate(all="ignore")  # overflow and NaN are part of what the tests probe
def backward(dy, x, gamma, *, axis, eps, compute="float32", accumulate=None, dgamma_without_invstd=False,
             dx_without_mean_dy=False, dbeta_mean=False):
    """Training backward in `compute`, sums in `accumulate`: dx = gamma s (dy - mean(dy) - z mean(dy z)),
    dgamma = sum(dy z), dbeta = sum(dy). Known mistakes: dgamma = sum(dy (x - mean)), forgetting the 1/std
    factor; dx without its mean(dy) term; dbeta = mean(dy)."""
    ct = numpy_format(compute)
    at = numpy_format(accumulate or compute)
    xc, gc = np.asarray(x).astype(ct), np.asarray(dy).astype(ct)
    rows = _rows(xc, axis)
    n = ct.type(rows.shape[1])
    mean = _mean(rows, at, ct)
    d = rows - mean[:, None]
    invstd = ct.type(1) / np.sqrt(_mean(d * d, at, ct) + ct.type(eps))
    z = (xc - _b(mean, x.ndim, axis)) * _b(invstd, x.ndim, axis)
    g_rows, gz_rows = _rows(gc, axis), _rows(gc * z, axis)
    mean_g, mean_gz = _mean(g_rows, at, ct), _mean(gz_rows, at, ct)
    gam = np.asarray(gamma).astype(ct)
    centred = gc - z * _b(mean_gz, x.ndim, axis) if dx_without_mean_dy else gc - _b(mean_g, x.ndim, axis) - z * _b(mean_gz, x.ndim, axis)
    dx = _b(gam * invstd, x.ndim, axis) * centred
    dbeta = g_rows.sum(axis=1, dtype=at).astype(ct)
    return {
        "dx": round_to(dx, np.asarray(x).dtype.name),
        "dgamma": gz_rows.sum(axis=1, dtype=at).astype(ct) / (invstd if dgamma_without_invstd else ct.type(1)),
        "dbeta": dbeta / n if dbeta_mean else dbeta,
    }


@np.errstate(all="ignore")  # overflow and NaN are part of what the tests probe
def evaluate(x, gamma, beta, running_mean, running_var, *, axis, eps, compute="float32"):
    """Eval forward in `compute`, folded as x * a + (beta - mean * a) like tf.nn.batch_normalization."""
    ct = numpy_format(compute)
    xc = np.asarray(x).astype(ct)
    a = np.asarray(gamma).astype(ct) / np.sqrt(np.asarray(running_var).astype(ct) + ct.type(eps))
    shift = np.asarray(beta).astype(ct) - np.asarray(running_mean).astype(ct) * a
    return {"y": round_to(xc * _b(a, x.ndim, axis) + _b(shift, x.ndim, axis), np.asarray(x).dtype.name)}
