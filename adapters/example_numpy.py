"""A complete bnconf backend in a few lines of NumPy, written as a user would write their own.

It claims PyTorch's functional convention (momentum weights the new batch, Bessel-corrected running
variance) for the training forward, the eval forward and the training backward, in float64 and float32 on the
CPU. What each mode returns:

    train_forward    y; with running statistics given, the updated running_mean and running_var
    eval_forward     y (a backend that keeps its statistics in a module may also return them, read back
                     after the call: they must be the given ones)
    train_backward   dx; with gamma and beta given, dgamma and dbeta

It refuses what the spec's edge cases require a refusal for (no value per channel in training, a running
variance from one value, a momentum outside [0, 1]): see spec/edge_cases.py; and a momentum of None (a
cumulative average, which its convention does not have), with a ValueError: any other exception would be a
crash (conformance/refusal.py). Validate it with

    bnconf validate adapters/example_numpy.py:BACKEND
    python -m pytest --pyargs bnconf.testing --bnconf-backend adapters/example_numpy.py:BACKEND

`adapters/example_recorded.py` shows how a backend records a documented deviation.
"""

import numpy as np

from bnconf.adapters.protocol import Outputs
from bnconf.spec import Mode, convention


class NumpyBatchNorm:
    name = "example.numpy"
    convention = convention("torch.nn.functional.batch_norm")
    modes = frozenset({Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD})
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def run(self, mode, r):
        x = r.x.astype(r.dtype)
        axis = r.axis % x.ndim
        reduce = tuple(i for i in range(x.ndim) if i != axis)
        shape = [-1 if i == axis else 1 for i in range(x.ndim)]
        c = x.shape[axis]
        gamma = np.ones(c) if r.gamma is None else r.gamma
        beta = np.zeros(c) if r.beta is None else r.beta
        out = Outputs()
        if mode is Mode.TRAIN_BACKWARD:  # dx = gamma / s * (dy - mean(dy) - z * mean(dy * z)), z = (x - mean) / s
            dy = r.dy.astype(r.dtype)
            s = np.sqrt(x.var(axis=reduce) + r.eps).reshape(shape)
            z = (x - x.mean(axis=reduce).reshape(shape)) / s
            mean_dy, mean_dyz = dy.mean(axis=reduce).reshape(shape), (dy * z).mean(axis=reduce).reshape(shape)
            out.dx = (gamma.reshape(shape) / s * (dy - mean_dy - z * mean_dyz)).astype(r.dtype)
            if r.gamma is not None:
                out.dgamma, out.dbeta = (dy * z).sum(axis=reduce), dy.sum(axis=reduce)
            return out
        if mode is Mode.TRAIN_FORWARD:
            n = x.size // max(c, 1)
            if n == 0:
                raise ValueError(f"training needs at least one value per channel, got x of shape {x.shape}")
            if r.running_mean is not None and n < 2:  # the Bessel-corrected running variance would be 0/0
                raise ValueError(f"a running variance needs 2 or more values per channel, got {n} (x of shape {x.shape})")
            if r.running_mean is not None and r.momentum is None:  # a refusal (a ValueError), not a TypeError crash
                raise ValueError("momentum None (a cumulative average) is not supported: give a momentum in [0, 1]")
            self.check_momentum(r.momentum)
            mean, var = x.mean(axis=reduce), x.var(axis=reduce)
            if r.running_mean is not None:
                out.running_mean = (1 - r.momentum) * r.running_mean + r.momentum * mean
                out.running_var = (1 - r.momentum) * r.running_var + r.momentum * var * n / (n - 1)
        else:
            mean, var = r.running_mean, r.running_var
        scale = (gamma / np.sqrt(var + r.eps)).astype(r.dtype)
        out.y = (x - mean.reshape(shape).astype(r.dtype)) * scale.reshape(shape) + beta.reshape(shape).astype(r.dtype)
        return out

    def check_momentum(self, momentum):
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")


BACKEND = NumpyBatchNorm()
