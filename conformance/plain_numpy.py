"""Deliberately plain batch-norm implementations in a working precision, to test the error model.

`train` / `backward` compute in `compute` (float32 by default) from inputs of any float dtype and
round y and dx to the input dtype, like a framework kernel would. Switches reproduce known mistakes
(eps outside the root, the wrong variance estimator, momentum the wrong way round) and the unstable
one-pass variance, so that tests can check the error model tells them from rounding noise.
"""

import numpy as np

from .arrays import round_to


def _rows(a, axis):
    return np.ascontiguousarray(np.moveaxis(a, axis, 0)).reshape(a.shape[axis], -1)


def _b(v, ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


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
    one_pass=False,
    eps_outside=False,
    running_unbiased=True,
    momentum_reversed=False,
):
    """Training forward in `compute`; returns a dict of the quantities a framework would return."""
    ct = np.dtype(compute)
    xc = np.asarray(x).astype(ct)
    rows = _rows(xc, axis)
    n = ct.type(rows.shape[1])
    mean = rows.sum(axis=1, dtype=ct) / n
    if one_pass:
        var = (rows * rows).sum(axis=1, dtype=ct) / n - mean * mean
    else:
        d = rows - mean[:, None]
        var = (d * d).sum(axis=1, dtype=ct) / n
    e = ct.type(eps)
    invstd = ct.type(1) / (np.sqrt(var) + e) if eps_outside else ct.type(1) / np.sqrt(var + e)
    g, bt = np.asarray(gamma).astype(ct), np.asarray(beta).astype(ct)
    y = _b(g, x.ndim, axis) * (xc - _b(mean, x.ndim, axis)) * _b(invstd, x.ndim, axis) + _b(bt, x.ndim, axis)
    w = ct.type(1 - new_weight if momentum_reversed else new_weight)
    batch_var = var * n / (n - ct.type(1)) if running_unbiased else var
    return {
        "y": round_to(y, np.asarray(x).dtype.name),
        "saved_mean": mean,
        "saved_var": var,
        "saved_invstd": invstd,
        "running_mean": (ct.type(1) - w) * np.asarray(running_mean).astype(ct) + w * mean,
        "running_var": (ct.type(1) - w) * np.asarray(running_var).astype(ct) + w * batch_var,
    }


@np.errstate(all="ignore")  # overflow and NaN are part of what the tests probe
def backward(dy, x, gamma, *, axis, eps, compute="float32", dgamma_without_invstd=False):
    """Training backward in `compute`: dx = gamma s (dy - mean(dy) - z mean(dy z)); the switch returns
    dgamma = sum(dy (x - mean)), a known mistake that forgets the 1/std factor."""
    ct = np.dtype(compute)
    xc, gc = np.asarray(x).astype(ct), np.asarray(dy).astype(ct)
    rows = _rows(xc, axis)
    n = ct.type(rows.shape[1])
    mean = rows.sum(axis=1, dtype=ct) / n
    d = rows - mean[:, None]
    invstd = ct.type(1) / np.sqrt((d * d).sum(axis=1, dtype=ct) / n + ct.type(eps))
    z = (xc - _b(mean, x.ndim, axis)) * _b(invstd, x.ndim, axis)
    g_rows, gz_rows = _rows(gc, axis), _rows(gc * z, axis)
    mean_g, mean_gz = g_rows.sum(axis=1, dtype=ct) / n, gz_rows.sum(axis=1, dtype=ct) / n
    gam = np.asarray(gamma).astype(ct)
    dx = _b(gam * invstd, x.ndim, axis) * (gc - _b(mean_g, x.ndim, axis) - z * _b(mean_gz, x.ndim, axis))
    return {
        "dx": round_to(dx, np.asarray(x).dtype.name),
        "dgamma": gz_rows.sum(axis=1, dtype=ct) / (invstd if dgamma_without_invstd else ct.type(1)),
        "dbeta": g_rows.sum(axis=1, dtype=ct),
    }


@np.errstate(all="ignore")  # overflow and NaN are part of what the tests probe
def evaluate(x, gamma, beta, running_mean, running_var, *, axis, eps, compute="float32"):
    """Eval forward in `compute`, folded as x * a + (beta - mean * a) like tf.nn.batch_normalization."""
    ct = np.dtype(compute)
    xc = np.asarray(x).astype(ct)
    a = np.asarray(gamma).astype(ct) / np.sqrt(np.asarray(running_var).astype(ct) + ct.type(eps))
    shift = np.asarray(beta).astype(ct) - np.asarray(running_mean).astype(ct) * a
    return {"y": round_to(xc * _b(a, x.ndim, axis) + _b(shift, x.ndim, axis), np.asarray(x).dtype.name)}
