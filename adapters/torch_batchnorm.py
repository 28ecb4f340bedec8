"""PyTorch batch norm behind the adapter protocol: torch.nn.functional.batch_norm and BatchNorm1d/2d/3d.

Parameters and running statistics are held in float32 for float16/bfloat16 inputs (the mixed-precision
layout autocast produces) and in the input's dtype otherwise; the "[half parameters]" module holds them in
the input's half format, as `module.half()` / `module.bfloat16()` leave them; gradients come from autograd; memory format
contiguous or channels_last (4-D and 5-D inputs). This module imports torch: the registry loads it only
when a PyTorch backend is asked for.
"""

import numpy as np
import torch

from ..spec import Mode, Precision, precision_for
from ..spec.conventions import TORCH_BATCHNORM1D, TORCH_BATCHNORM2D, TORCH_BATCHNORM3D, TORCH_FUNCTIONAL
from .protocol import Outputs, Request

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)


def _param_dtype(dtype: str) -> torch.dtype:
    return torch.float64 if dtype == "float64" else torch.float32


def _tensor(a, dtype: torch.dtype, device: str, channels_last: bool = False) -> torch.Tensor:
    # torch.tensor copies: an in-place running-statistics update must never write into bnconf's arrays
    t = torch.tensor(np.asarray(a, dtype=np.float64), device=device).to(dtype)
    if channels_last and t.dim() in (4, 5):
        t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    return t


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


class _TorchBackend:
    """What the functional and module adapters share: devices, dtypes, tensors in and out, autograd."""

    modes = frozenset(Mode)
    dtypes = tuple(TORCH_DTYPES)
    devices = ("cpu", "cuda")

    def __init__(self, name: str, channels_last: bool, ranks: tuple[int, ...]):
        self.name = name + ("[channels_last]" if channels_last else "")
        self.channels_last = channels_last
        # channels_last is a memory format of 4-D and 5-D tensors only: test those ranks there
        self.ranks = tuple(r for r in ranks if r in (4, 5)) if channels_last else ranks

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def unavailable(self, device: str) -> str | None:
        if device == "cuda" and not torch.cuda.is_available():
            return "no CUDA device on this machine"
        return None

    def run(self, mode: Mode, r: Request) -> Outputs:
        backward = mode in BACKWARD
        x = _tensor(r.x, TORCH_DTYPES[r.dtype], r.device, self.channels_last).requires_grad_(backward)
        out, params, buffers = self._forward(x, r, training=mode in TRAINING, backward=backward)
        if backward:
            dx, dgamma, dbeta = self._gradients(x, params, r)
            if mode is Mode.EVAL_BACKWARD:  # the running statistics after the backward, as after an eval forward
                return Outputs(dx=dx, dgamma=dgamma, dbeta=dbeta, running_mean=_numpy(buffers[0]), running_var=_numpy(buffers[1]))
            return Outputs(dx=dx, dgamma=dgamma, dbeta=dbeta)
        return out

    def _gradients(self, x, params, r: Request):
        y, gamma, beta = params
        y.backward(_tensor(r.dy, y.dtype, r.device, self.channels_last))
        return _numpy(x.grad), _numpy(None if gamma is None else gamma.grad), _numpy(None if beta is None else beta.grad)


class FunctionalBatchNorm(_TorchBackend):
    """torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)."""

    convention = TORCH_FUNCTIONAL

    def __init__(self, channels_last: bool = False):
        super().__init__("torch.nn.functional.batch_norm", channels_last, TORCH_FUNCTIONAL.ranks)

    def _forward(self, x, r: Request, training: bool, backward: bool):
        pdt = _param_dtype(r.dtype)
        rm = None if r.running_mean is None else _tensor(r.running_mean, pdt, r.device)
        rv = None if r.running_var is None else _tensor(r.running_var, pdt, r.device)
        gamma = None if r.gamma is None else _tensor(r.gamma, pdt, r.device).requires_grad_(backward)
        beta = None if r.beta is None else _tensor(r.beta, pdt, r.device).requires_grad_(backward)
        momentum = 0.0 if r.momentum is None else r.momentum
        y = torch.nn.functional.batch_norm(x, rm, rv, gamma, beta, training, momentum, r.eps)
        out = Outputs(y=_numpy(y))
        if rm is not None:  # updated in training; in eval read back to show they were left alone
            out.running_mean, out.running_var = _numpy(rm), _numpy(rv)
        return out, (y, gamma, beta), (rm, rv)


class ModuleBatchNorm(_TorchBackend):
    """torch.nn.BatchNorm1d/2d/3d with affine and track_running_stats set by the request; with
    `half_parameters`, weight, bias and running statistics in the input's half format (`module.half()`)."""

    def __init__(self, convention, channels_last: bool = False, half_parameters: bool = False):
        super().__init__(convention.name, channels_last, convention.ranks)
        self.convention = convention
        self.module_class = getattr(torch.nn, convention.name.rsplit(".", 1)[1])
        self.half_parameters = half_parameters
        if half_parameters:
            self.name += "[half parameters]"
            self.dtypes = ("float16", "bfloat16")

    def precision(self, dtype: str, device: str) -> Precision:
        """float32 arithmetic; statistics and parameters stored in the half format when they are half."""
        return precision_for(dtype, stats=dtype) if self.half_parameters else precision_for(dtype)

    def _forward(self, x, r: Request, training: bool, backward: bool):
        channels = r.x.shape[1]
        module = self.module_class(
            channels, eps=r.eps, momentum=r.momentum, affine=r.gamma is not None,
            track_running_stats=r.running_mean is not None, device=r.device,
            dtype=TORCH_DTYPES[r.dtype] if self.half_parameters else _param_dtype(r.dtype),
        )
        with torch.no_grad():
            if r.gamma is not None:
                module.weight.copy_(_tensor(r.gamma, module.weight.dtype, r.device))
                module.bias.copy_(_tensor(r.beta, module.bias.dtype, r.device))
            if r.running_mean is not None:
                module.running_mean.copy_(_tensor(r.running_mean, module.running_mean.dtype, r.device))
                module.running_var.copy_(_tensor(r.running_var, module.running_var.dtype, r.device))
                module.num_batches_tracked.fill_(r.batches_seen)
        module.train(training)
        y = module(x)
        out = Outputs(y=_numpy(y))
        if r.running_mean is not None:  # updated in training; in eval read back to show they were left alone
            out.running_mean, out.running_var = _numpy(module.running_mean), _numpy(module.running_var)
            if training:
                out.batches_seen = int(module.num_batches_tracked)
        return out, (y, module.weight, module.bias), (module.running_mean, module.running_var)


BACKENDS = [
    FunctionalBatchNorm(),
    FunctionalBatchNorm(channels_last=True),
    ModuleBatchNorm(TORCH_BATCHNORM1D),
    ModuleBatchNorm(TORCH_BATCHNORM2D),
    ModuleBatchNorm(TORCH_BATCHNORM2D, channels_last=True),
    ModuleBatchNorm(TORCH_BATCHNORM3D),
    ModuleBatchNorm(TORCH_BATCHNORM2D, half_parameters=True),
]
