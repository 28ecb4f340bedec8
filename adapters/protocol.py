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
`unavailable(device)` (None, or why that device cannot run now, e.g. "no CUDA device"), `versions()`
(the versions of what it wraps, for reports), and its own recorded deviations: `known_discrepancies` (a tuple
of `bnconf.conformance.records.KnownDiscrepancy`: where it computes something other than its declared
semantics, and what instead) and `edge_records` (a tuple of `EdgeRecord`: where it does something other than
the spec's edge cases require). They apply before bnconf's own records and are checked the same way (a
covered case against the recorded behaviour; a record no case needed is reported stale); a record naming a
quantity, mode, dtype or edge case that does not exist is bad input (conformance/user_records.py, which also
loads them from a file: `bnconf validate TARGET --records records.py:ATTR`).

bnconf gives the backend NumPy float64 arrays whose values are exactly representable in `request.dtype`,
and momentum and eps in the backend's own convention; the backend converts to and from its own tensors
and returns NumPy arrays of a real floating-point dtype (not necessarily the request's: float32 for a float16
request is fine); complex, integer, boolean, string or object arrays make that case an error.
The backend must not write into the request's arrays (bnconf reports it when it does).

What each mode returns (`Outputs`): training forward y, and the updated running statistics when the request
gives some (saved statistics optional); eval forward y; backward dx, and dgamma and dbeta. In every mode
`running_mean`/`running_var` are the running statistics *after the call*: a backend whose module keeps them
(buffers, variables, a state tree) reads them back after an eval call too and returns them, and they must
then be the given ones bit for bit (eval leaves the state unchanged; SPEC.md section 1.6). After an eval call
returning them is optional, for an API that cannot show them; a call given no running statistics returns none.
"""

import reprlib
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np

from ..spec import Convention, InputError, Mode, Precision, checks, precision_for
from ..spec.error_model import split_layout, with_parameters


@dataclass(frozen=True)
class Request:
    """One call: inputs as NumPy arrays, parameters in the backend's convention.

    gamma/beta None: no affine parameters. running_mean/running_var None: statistics not tracked.
    `batches_seen` is the number of training steps already in the running statistics (PyTorch's
    num_batches_tracked), which a cumulative or zero-debiased average needs.
    `param_dtype` is the format gamma, beta and the running statistics are given in and the running, saved
    statistics, dgamma and dbeta are expected in, for a backend that declares that layout in `param_dtypes`
    (e.g. float16 x with float32 parameters); None: the backend's own layout (its declared `Precision.stats`).
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
    param_dtype: str | None = None


@dataclass
class Outputs:
    """What a backend returns; a quantity its API does not expose stays None.

    `running_mean`/`running_var` are the running statistics after the call, in every mode: updated by a
    training forward given some (required there), read back after an eval forward or backward (optional,
    but then they must equal the given ones bit for bit: a backend that changes them in eval is
    NON-CONFORMANT), and None when the request gives none. `batches_seen` is the batch count after a
    training forward, where the backend keeps one.
    """

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

    def quantities(self, request: Request | None = None) -> dict[str, np.ndarray]:
        """The array quantities returned, as float64 copies; OutputError for one that is not real floating point
        or, given the `request`, not of the shape it asks for."""
        out = {
            f.name: real_floats(f.name, getattr(self, f.name))
            for f in fields(self)
            if f.name != "batches_seen" and getattr(self, f.name) is not None
        }
        if request is not None:
            for q, a in out.items():
                check_shape(q, a, request)
        return out


class OutputError(TypeError):
    """A backend returned a quantity bnconf cannot judge (not a ValueError: that would read as a refusal)."""


REAL_FLOATS = "float16, float32, float64 or bfloat16"


def is_real_float(dtype: np.dtype) -> bool:
    """A real floating-point dtype: NumPy's (kind 'f') or ml_dtypes' bfloat16."""
    return dtype.kind == "f" or dtype.name == "bfloat16"


def real_floats(quantity: str, value) -> np.ndarray:
    """`value` as a float64 copy (never the backend's own buffer), or OutputError naming the quantity, what
    it is and the fix: complex, integer, boolean, string or object values would be judged after a lossy or
    parsing conversion."""
    try:
        a = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - e.g. a framework tensor NumPy cannot hold
        raise OutputError(f"{quantity} is a {type(value).__name__} NumPy cannot convert ({type(e).__name__}: {e}); "
                          f"return it as a NumPy array of {REAL_FLOATS}") from None
    if not is_real_float(a.dtype):
        raise OutputError(f"{quantity} is a {type(value).__name__} of dtype {a.dtype}, which bnconf cannot judge "
                          f"without losing or parsing values; return it as a real floating-point NumPy array "
                          f"({REAL_FLOATS})")
    return np.array(a, dtype=np.float64)


ELEMENTWISE = ("y", "dx")  # the other quantities hold one value per channel


def check_shape(quantity: str, a: np.ndarray, r: Request) -> None:
    """OutputError unless `a` has x's shape (y, dx) or one value per channel (the others)."""
    x = np.shape(r.x)
    expected, what = (x, "x's shape") if quantity in ELEMENTWISE else ((x[r.axis],), "one value per channel")
    if a.shape != expected:
        raise OutputError(f"{quantity} has shape {a.shape}; bnconf expects {expected} ({what}, x being {x} with "
                          f"channel axis {r.axis}): return it in that shape")


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


# attribute -> (accepted types, what it must hold, an example of a right value)
_REQUIRED = {
    "name": (str, "a unique str", 'name = "my_bn"'),
    "convention": (Convention, "a bnconf.spec.Convention record",
                   'convention = bnconf.spec.convention("torch.nn.BatchNorm2d") (`bnconf conventions` lists them)'),
    "modes": ((frozenset, set), "a frozenset of bnconf.spec.Mode",
              "modes = frozenset({Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD})"),
    "dtypes": (tuple, "a tuple of dtype names", 'dtypes = ("float32",)'),
    "devices": (tuple, "a tuple of device names", 'devices = ("cpu",)'),
}
_PROTOCOL = "a backend needs name, convention, modes, dtypes, devices and run(mode, request)"


def check_backend(obj) -> None:
    """Raise BackendError naming the first attribute `obj` lacks or gets wrong, and how to set it."""
    if isinstance(obj, type):
        raise BackendError(f"{obj.__name__} is a class, not a backend: name an instance (e.g. BACKEND = {obj.__name__}())")
    if not any(hasattr(obj, attr) for attr in (*_REQUIRED, "run")):
        raise BackendError(f"a {type(obj).__name__} is not a backend: {_PROTOCOL} "
                           "(see the example bnconf.adapters.example_numpy)")
    label = f"backend {obj.name!r}" if isinstance(getattr(obj, "name", None), str) else f"{type(obj).__name__} object"
    for attr, (kind, what, example) in _REQUIRED.items():
        if not hasattr(obj, attr):
            raise BackendError(f"{label} has no attribute {attr!r}: set {example} ({_PROTOCOL})")
        value = getattr(obj, attr)
        if not isinstance(value, kind):
            raise BackendError(f"{label}: {attr!r} must be {what}, got {type(value).__name__} {reprlib.repr(value)}; set {example}")
    if not callable(getattr(obj, "run", None)):
        raise BackendError(f"{label} has no run(mode, request) method: add one that returns "
                           "bnconf.adapters.protocol.Outputs (see the example bnconf.adapters.example_numpy)")
    bad_modes = [m for m in obj.modes if not isinstance(m, Mode)]
    if bad_modes:
        raise BackendError(f"{label}: modes must be bnconf.spec.Mode members, got {bad_modes}; "
                           f"set {_REQUIRED['modes'][2]}")
    from ..spec.formats import FORMATS

    bad_dtypes = [d for d in obj.dtypes if d not in FORMATS]
    if bad_dtypes:
        raise BackendError(f"{label}: unknown dtypes {bad_dtypes}; bnconf knows {', '.join(FORMATS)}")
    bad_devices = [d for d in obj.devices if not isinstance(d, str)]
    if bad_devices:
        raise BackendError(f"{label}: devices must be names (str), got {bad_devices}; set {_REQUIRED['devices'][2]}")


def channel_axes(backend) -> tuple[int, ...]:
    return tuple(getattr(backend, "channel_axes", (backend.convention.channel_axis,)))


def param_dtypes(backend, dtype: str) -> tuple[str, ...]:
    """The parameter dtypes `backend` declares for `dtype` data besides its own layout (optional attribute
    `param_dtypes`, data dtype -> parameter dtypes; default none)."""
    declared = getattr(backend, "param_dtypes", None) or {}
    return tuple(declared.get(dtype, ()))


def supports_layout(backend, name: str) -> bool:
    """`backend` takes data of layout `name`: a dtype it declares, or a mixed layout ("float16/float32") whose
    parameter dtype it declares for that data dtype."""
    try:
        dtype, param_dtype = split_layout(name)
    except ValueError:
        return False
    return dtype in backend.dtypes and (param_dtype is None or param_dtype in param_dtypes(backend, dtype))


def declared_precision(backend, dtype: str, device: str) -> Precision:
    """The backend's declared `Precision` for `dtype` on `device` (`precision(dtype, device)`, default
    `spec.precision_for(dtype)`). `dtype` may name a mixed layout ("float16/float32", see
    `spec.error_model.layout_name`): the data dtype's precision with the parameters, running statistics and
    parameter gradients held in the parameter dtype (its `stats`)."""
    data, params = split_layout(dtype)
    declare = getattr(backend, "precision", None)
    return with_parameters(declare(data, device) if callable(declare) else precision_for(data), params)


def unavailable(backend, device: str) -> str | None:
    """None when `device` can run now, else the reason it cannot."""
    if device not in backend.devices:
        return f"{backend.name} does not run on {device}"
    check = getattr(backend, "unavailable", None)
    return check(device) if callable(check) else None


def first_available_device(backend) -> str | None:
    """The first of the backend's devices that can run now, or None."""
    return next((d for d in backend.devices if not unavailable(backend, d)), None)


def check_request(backend, mode: Mode, r: Request) -> None:
    """Raise spec.InputError (a ValueError) naming what in `r` the backend cannot take: its dtype, device,
    rank or channel axis, eps, half of a pair (gamma/beta, running mean/var) or a pair member of the wrong
    shape, a missing or misshapen dy, or eval without running statistics where the convention needs them.
    Adapters call it first, so that bad input never becomes a traceback from inside a framework."""
    try:
        _check_request(backend, mode, r)
    except InputError as e:
        raise InputError(f"{backend.name}: {e}") from None


def _check_request(backend, mode: Mode, r: Request) -> None:
    shape = np.shape(checks.real_array(r.x, "x"))
    ndim = len(shape)
    checks.dtype_name(r.dtype)
    if r.dtype not in backend.dtypes:
        raise InputError(f"dtype {r.dtype!r} is not supported (supported: {', '.join(backend.dtypes)})")
    if r.param_dtype is not None:
        checks.dtype_name(r.param_dtype)
        accepted = param_dtypes(backend, r.dtype)
        if r.param_dtype not in accepted:
            raise InputError(f"param_dtype {r.param_dtype!r} is not supported for {r.dtype} data (supported: "
                             f"{', '.join(accepted) or 'none declared'}); give param_dtype None, or declare the "
                             f"layout in the backend's param_dtypes")
    if r.device not in backend.devices:
        raise InputError(f"device {r.device!r} is not supported (supported: {', '.join(backend.devices)})")
    ranks = tuple(getattr(backend, "ranks", backend.convention.ranks))
    if ndim not in ranks:
        raise InputError(f"input rank {ndim} is not supported (ranks {ranks}); x has shape {checks.shape_text(shape)}")
    axes = channel_axes(backend)
    checks.integer("the channel axis", r.axis)
    if not -ndim <= r.axis < ndim or r.axis % ndim not in {a % ndim for a in axes}:
        raise InputError(f"channel axis {r.axis} is not supported for rank {ndim} (axes {axes})")
    checks.eps_value(r.eps)
    if r.momentum is not None:
        checks.finite_number("momentum", r.momentum)
    checks.integer("batches_seen", r.batches_seen, at_least=0)
    if (r.gamma is None) != (r.beta is None):
        raise InputError("gamma and beta must be given together (one affine switch covers both)")
    if (r.running_mean is None) != (r.running_var is None):
        raise InputError("running_mean and running_var must be given together")
    if mode in (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD) and r.dy is None:
        raise InputError(f"{mode.value} needs dy, the gradient of the output")
    checks.batch(r.x, r.axis, gamma=r.gamma, beta=r.beta, running_mean=r.running_mean, running_var=r.running_var, dy=r.dy)
    if (mode in (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD) and r.running_mean is None
            and not backend.convention.untracked_eval_uses_batch_stats):
        raise InputError(f"{mode.value} normalizes with running statistics; give running_mean and running_var")
