"""A synchronized batch norm over simulated replicas in plain NumPy: the reference replica backend, written as a
user would write their own (README: "Validating your own synchronized batch norm").

Each replica holds one shard of the batch (axis 0) and, in the data's format, computes its partial statistics
(count, mean, M2 = sum((x - mean)**2)); the partials are merged count-weighted by Chan's update (what an
all-gather of the partials followed by a merge computes on every replica); every replica normalizes its shard with
the global mean and biased variance and updates its running statistics from them (Bessel correction with the
global count N). The backward all-reduces sum(dy) and sum(dy * xhat) and divides them by N:

    dx_r = gamma * s * (dy_r - sum(dy) / N - xhat_r * sum(dy * xhat) / N),   s = 1 / sqrt(var + eps)

dgamma = sum(dy * xhat) and dbeta = sum(dy) over all replicas (the gradient of the sum of their losses).
Shards may differ in size or be empty. Its single-device convention is PyTorch's functional one (momentum
weights the new batch, Bessel-corrected running variance).
"""

import numpy as np

from bnconf.adapters.replica_protocol import ShardedOutputs, check_replica_request
from bnconf.spec import convention, precision_for
from bnconf.spec.replica_conventions import NUMPY_SYNC


def partial_statistics(x: np.ndarray, axis: int) -> tuple[int, np.ndarray, np.ndarray]:
    """One replica's (count, mean, M2) per channel, in x's format; an empty shard gives (0, 0, 0)."""
    reduce = tuple(i for i in range(x.ndim) if i != axis)
    n = x.size // x.shape[axis]
    if n == 0:
        zero = np.zeros(x.shape[axis], dtype=x.dtype)
        return 0, zero, zero
    mean = x.mean(axis=reduce)
    return n, mean, ((x - np.expand_dims(mean, reduce)) ** 2).sum(axis=reduce)


def chan_merge(partials):
    """Count-weighted merge: n = na + nb, mean += delta nb / n, M2 = M2a + M2b + delta**2 na nb / n."""
    n, mean, m2 = partials[0]
    for nb, mean_b, m2_b in partials[1:]:
        if nb == 0:
            continue
        if n == 0:
            n, mean, m2 = nb, mean_b, m2_b
            continue
        total = n + nb
        delta = mean_b - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2_b + delta**2 * (n * nb / total)
        n = total
    return n, mean, m2


class SimulatedSyncBatchNorm:
    """Synchronized batch norm; the W replicas are simulated in this process, one after another."""

    name = "example.numpy.sync"
    convention = convention("torch.nn.functional.batch_norm")
    replica = NUMPY_SYNC
    dtypes = ("float64", "float32")
    devices = ("cpu",)
    world_sizes = (1, 2, 3, 4)

    def precision(self, dtype, device="cpu"):
        return precision_for(dtype)  # its arithmetic in the data's format; any order of additions

    def step(self, r):
        check_replica_request(self, r)
        dt = np.dtype(r.dtype)
        xs = [s.astype(dt) for s in r.shards]
        axis = r.axis % xs[0].ndim
        shape = [-1 if i == axis else 1 for i in range(xs[0].ndim)]
        reduce = tuple(i for i in range(xs[0].ndim) if i != axis)
        c = xs[0].shape[axis]
        n, mean, m2 = chan_merge([partial_statistics(x, axis) for x in xs])  # the all-gather and merge
        if n == 0:
            raise ValueError("training needs at least one value per channel over all replicas")
        if r.running_mean is not None and n < 2:
            raise ValueError("a Bessel-corrected running variance needs 2 or more values per channel")
        var = m2 / dt.type(n)
        gamma = np.ones(c, dt) if r.gamma is None else r.gamma.astype(dt)
        beta = np.zeros(c, dt) if r.beta is None else r.beta.astype(dt)
        s = (dt.type(1) / np.sqrt(var + dt.type(r.eps))).reshape(shape)
        xhat = [(x - mean.reshape(shape)) * s for x in xs]
        out = ShardedOutputs(y=tuple(h * gamma.reshape(shape) + beta.reshape(shape) for h in xhat))
        if r.running_mean is not None:
            m = dt.type(r.momentum)
            rm = (1 - m) * r.running_mean.astype(dt) + m * mean
            rv = (1 - m) * r.running_var.astype(dt) + m * (m2 / dt.type(n - 1))
            out.running_mean, out.running_var = (rm,) * len(xs), (rv,) * len(xs)
        if r.dys is not None:
            dys = [d.astype(dt) for d in r.dys]
            sum_dy = sum(d.sum(axis=reduce) for d in dys)  # the all-reduce of each replica's sums
            sum_dy_xhat = sum((d * h).sum(axis=reduce) for d, h in zip(dys, xhat))
            k = (gamma.reshape(shape) * s)
            out.dx = tuple(k * (d - (sum_dy / dt.type(n)).reshape(shape) - h * (sum_dy_xhat / dt.type(n)).reshape(shape))
                           for d, h in zip(dys, xhat))
            out.dgamma, out.dbeta = sum_dy_xhat, sum_dy
        return out


BACKEND = SimulatedSyncBatchNorm()
BACKENDS = [BACKEND]
