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
            mean, var = x.mean(axis=reduce), x.var(axis=reduce)
            if r.running_mean is not None:
                n = x.size // c
                out.running_mean = (1 - r.momentum) * r.running_mean + r.momentum * mean
                out.running_var = (1 - r.momentum) * r.running_var + r.momentum * var * n / (n - 1)
        else:
            mean, var = r.running_mean, r.running_var
        scale = (gamma / np.sqrt(var + r.eps)).astype(r.dtype)
        out.y = (x - mean.reshape(shape).astype(r.dtype)) * scale.reshape(shape) + beta.reshape(shape).astype(r.dtype)
        return out


BACKEND = NumpyBatchNorm()
