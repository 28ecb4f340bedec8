"""A complete bnconf backend in a few lines of NumPy, written as a user would write their own.

It claims PyTorch's functional convention (momentum weights the new batch, Bessel-corrected running
variance) for training and eval forwards in float64 and float32 on the CPU. Validate it with

    python -m pytest tests/conformance --bnconf-backend adapters/example_numpy.py:BACKEND
"""

import numpy as np

from bnconf.adapters.protocol import Outputs
from bnconf.spec import Mode, convention


class NumpyBatchNorm:
    name = "example.numpy"
    convention = convention("torch.nn.functional.batch_norm")
    modes = frozenset({Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD})
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
        if mode is Mode.TRAIN_FORWARD:
            n = x.size // max(c, 1)
            if n == 0:
                raise ValueError(f"training needs at least one value per channel, got x of shape {x.shape}")
            if r.running_mean is not None and n < 2:  # the Bessel-corrected running variance would be 0/0
                raise ValueError(f"a running variance needs 2 or more values per channel, got {n} (x of shape {x.shape})")
            if r.momentum is not None and not 0 <= r.momentum <= 1:
                raise ValueError(f"momentum must be in [0, 1], got {r.momentum}")
            mean, var = x.mean(axis=reduce), x.var(axis=reduce)
            if r.running_mean is not None:
                out.running_mean = (1 - r.momentum) * r.running_mean + r.momentum * mean
                out.running_var = (1 - r.momentum) * r.running_var + r.momentum * var * n / (n - 1)
        else:
            mean, var = r.running_mean, r.running_var
        scale = (gamma / np.sqrt(var + r.eps)).astype(r.dtype)
        out.y = (x - mean.reshape(shape).astype(r.dtype)) * scale.reshape(shape) + beta.reshape(shape).astype(r.dtype)
        return out


BACKEND = NumpyBatchNorm()
