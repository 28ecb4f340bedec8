"""The adapter protocol: what bnconf asks of a batch-norm backend, and what it gets back.

A backend is any object with these attributes and a `run` method (no base class needed):

    name: str                        unique, e.g. "torch.nn.functional.batch_norm"
    convention: spec.Convention      the record that describes its semantics
    modes: frozenset[spec.Mode]      which of train/eval forward/backward it supports
    dtypes: tuple[str, ...]          of "float64", "float32", "float16", "bfloat16"
    devices: tuple[str, ...]         e.g. ("cpu",) or ("cpu", "cuda")
    run(mode, request) -> Outputs

and optionally `channel_axes` (the channel axes it accepts; default: the convention's), `ranks` (the input
ranks worth testing; default: the convention's), `precision(dtype,
device)` (its declared arithmetic, a `spec.Precision`; default `spec.precision_for(dtype)`),
`unavailable(device)` (None, or why that device cannot run now, e.g. "no CUDA device") and `versions()`
(the versions of what it wraps, for reports).

bnconf gives the backend NumPy float64 arrays whose values are exactly representable in `request.dtype`,
and momentum and eps in the backend's own convention; the backend converts to and from its own tensors
and returns NumPy arrays of any real dtype.
"""

from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np

from ..spec import Convention, Mode, Precision, precision_for


@dataclass(frozen=True)
class Request:
    """One call: inputs as NumPy arrays, parameters in the backend's convention.

    gamma/beta None: no affine parameters. running_mean/running_var None: statistics not tracked.
    `batches_seen` is the number of training steps already in the running statistics (PyTorch's
    num_batches_tracked), which a cumulative or zero-debiased average needs.
    """

    x: np.ndarray
    axis: int
    eps: float
    dtype: str
    device: str = "cpu"
    momentum: float | None = None
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    batches_seen: int = 0
    dy: np.ndarray | None = None


@dataclass
class Outputs:
    """What a backend returns; a quantity its API does not expose stays None."""

    y: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    saved_mean: np.ndarray | None = None
    saved_var: np.ndarray | None = None
    saved_invstd: np.ndarray | None = None
    dx: np.ndarray | None = None
    dgamma: np.ndarray | None = None
    dbeta: np.ndarray | None = None
    batches_seen: int | None = None

    def quantities(self) -> dict[str, np.ndarray]:
        """The array quantities returned, as float64."""
        return {
            f.name: np.asarray(getattr(self, f.name), dtype=np.float64)
            for f in fields(self)
            if f.name != "batches_seen" and getattr(self, f.name) is not None
        }


@runtime_checkable
class Backend(Protocol):
    name: str
    convention: Convention
    modes: frozenset
    dtypes: tuple
    devices: tuple

    def run(self, mode: Mode, request: Request) -> Outputs: ...


class BackendError(ValueError):
    """An object that does not implement the protocol, with what is missing."""


_REQUIRED = {"name": str, "convention": Convention, "modes": (frozenset, set), "dtypes": tuple, "devices": tuple}


def check_backend(obj) -> None:
    """Raise BackendError naming the first attribute `obj` lacks or gets wrong."""
    label = getattr(obj, "name", None) or type(obj).__name__
    for attr, kind in _REQUIRED.items():
        if not hasattr(obj, attr):
            raise BackendError(f"backend {label!r} has no attribute {attr!r} (the adapter protocol needs {', '.join(_REQUIRED)} and run())")
        if not isinstance(getattr(obj, attr), kind):
            raise BackendError(f"backend {label!r}: {attr!r} must be a {kind}, got {type(getattr(obj, attr)).__name__}")
    if not callable(getattr(obj, "run", None)):
        raise BackendError(f"backend {label!r} has no run(mode, request) method")
    bad_modes = [m for m in obj.modes if not isinstance(m, Mode)]
    if bad_modes:
        raise BackendError(f"backend {label!r}: modes must be bnconf.spec.Mode members, got {bad_modes}")
    from ..spec.formats import FORMATS

    bad_dtypes = [d for d in obj.dtypes if d not in FORMATS]
    if bad_dtypes:
        raise BackendError(f"backend {label!r}: unknown dtypes {bad_dtypes}; bnconf knows {', '.join(FORMATS)}")


def channel_axes(backend) -> tuple[int, ...]:
    return tuple(getattr(backend, "channel_axes", (backend.convention.channel_axis,)))


def declared_precision(backend, dtype: str, device: str) -> Precision:
    declare = getattr(backend, "precision", None)
    return declare(dtype, device) if callable(declare) else precision_for(dtype)


def unavailable(backend, device: str) -> str | None:
    """None when `device` can run now, else the reason it cannot."""
    if device not in backend.devices:
        return f"{backend.name} does not run on {device}"
    check = getattr(backend, "unavailable", None)
    return check(device) if callable(check) else None


def check_request(backend, mode: Mode, r: Request) -> None:
    """Raise ValueError naming what in `r` the backend cannot take: its dtype, device, rank or channel axis,
    half of a pair (gamma/beta, running mean/var), a missing or misshapen dy, or eval without running
    statistics where the convention needs them. Adapters call it first, so that bad input never becomes a
    traceback from inside a framework."""
    label, ndim = backend.name, np.ndim(r.x)
    if r.dtype not in backend.dtypes:
        raise ValueError(f"{label}: dtype {r.dtype!r} is not supported (supported: {', '.join(backend.dtypes)})")
    if r.device not in backend.devices:
        raise ValueError(f"{label}: device {r.device!r} is not supported (supported: {', '.join(backend.devices)})")
    ranks = tuple(getattr(backend, "ranks", backend.convention.ranks))
    if ndim not in ranks:
        raise ValueError(f"{label}: input rank {ndim} is not supported (ranks {ranks})")
    axes = channel_axes(backend)
    if not -ndim <= r.axis < ndim or r.axis % ndim not in {a % ndim for a in axes}:
        raise ValueError(f"{label}: channel axis {r.axis} is not supported for rank {ndim} (axes {axes})")
    if (r.gamma is None) != (r.beta is None):
        raise ValueError(f"{label}: gamma and beta must be given together (one affine switch covers both)")
    if (r.running_mean is None) != (r.running_var is None):
        raise ValueError(f"{label}: running_mean and running_var must be given together")
    if mode in (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD):
        if r.dy is None:
            raise ValueError(f"{label}: {mode.value} needs dy, the gradient of the output")
        if np.shape(r.dy) != np.shape(r.x):
            raise ValueError(f"{label}: dy has shape {np.shape(r.dy)}, x has {np.shape(r.x)}")
    if (mode in (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD) and r.running_mean is None
            and not backend.convention.untracked_eval_uses_batch_stats):
        raise ValueError(f"{label}: {mode.value} normalizes with running statistics; give running_mean and running_var")
