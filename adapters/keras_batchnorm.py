"""Keras 3 keras.layers.BatchNormalization on each installed Keras backend (tensorflow, jax, torch).

Keras fixes its backend at import (KERAS_BACKEND), so each backend runs in its own child process
(`subprocess_backend`): `BACKENDS` holds the proxies this process sees, and importing this module imports
no framework. `KerasBatchNorm` is the backend the child runs: it imports keras on first use.

The layer (keras/src/layers/normalization/batch_normalization.py, BatchNormalization.call, Keras 3.15.1):
inputs are cast to the policy's compute dtype by Layer.__call__, then to result_type(dtype, float32) (float16
and bfloat16 are computed in float32); mean, var = ops.moments(x) (biased variance: jax jnp.var and
tensorflow tf.nn.moments are two-pass, torch is one-pass E[x^2] - E[x]^2, unclamped);
moving = moving * momentum + batch * (1 - momentum); y = ops.batch_normalization(x, mean, var, axis,
beta, gamma, epsilon) = (x - mean) * rsqrt(var + eps) * gamma + beta, cast back to the compute dtype.
gamma, beta and the moving statistics are variables of the policy's variable dtype (autocast=False):
float32 under mixed_float16 / mixed_bfloat16, the input dtype under a plain policy.

Requests map to the layer as: gamma None -> center=False, scale=False; running statistics None -> the
layer's own (initial) moving statistics are used and not returned; momentum and epsilon as given. Given
running statistics come back after every forward (updated in training, read back after an eval call, which
must leave them unchanged) and after an eval backward on tensorflow and torch.
Gradients come from each backend's autodiff: tf.GradientTape, jax.vjp, torch.autograd.grad.
"""

import importlib.metadata
import importlib.util
from collections import OrderedDict

import numpy as np

from ..spec import Mode, VarianceAlgorithm, precision_for
from ..spec.conventions import KERAS3_BATCHNORM
from .protocol import Outputs, Request
from .subprocess_backend import SubprocessBackend

if importlib.util.find_spec("keras") is None:
    raise ModuleNotFoundError("No module named 'keras'", name="keras")

KERAS_BACKENDS = ("tensorflow", "jax", "torch")
ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")
MIXED = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}  # policy -> the input dtype it takes
TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
CACHE_SIZE = 1024  # layers (and, for jax, jitted functions) kept per process: more than a battery meets, so none it
# meets again is rebuilt (and recompiled); each holds a few (C,) variables

# what each child process is started with: its Keras backend, on the CPU only; jax needs x64 for float64
_ENV = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
_BACKEND_ENV = {
    "tensorflow": {},
    "jax": {"JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"},
    "torch": {},
}


_DISTRIBUTIONS = {  # (name in a report, the distributions that may provide it)
    "tensorflow": (("keras", ("keras",)), ("tensorflow", ("tensorflow", "tensorflow-cpu"))),
    "jax": (("keras", ("keras",)), ("jax", ("jax",)), ("jaxlib", ("jaxlib",))),
    "torch": (("keras", ("keras",)), ("torch", ("torch",))),
}


def _version(*distributions: str) -> str | None:
    for d in distributions:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def _variance_algorithm(keras_backend: str) -> VarianceAlgorithm:
    """ops.moments: jnp.var and tf.nn.moments are two-pass; the torch backend computes
    mean(x**2) - mean(x)**2 by design (keras/src/backend/torch/nn.py::moments says so)."""
    return VarianceAlgorithm.ONE_PASS if keras_backend == "torch" else VarianceAlgorithm.TWO_PASS


class KerasBatchNorm:
    """keras.layers.BatchNormalization under one Keras backend and dtype policy (None: the input's dtype)."""

    convention = KERAS3_BATCHNORM
    modes = frozenset(Mode)
    devices = ("cpu",)

    def __init__(self, keras_backend: str, policy: str | None = None):
        if keras_backend not in KERAS_BACKENDS:
            raise ValueError(f"unknown Keras backend {keras_backend!r}; Keras 3 has {', '.join(KERAS_BACKENDS)}")
        if policy is not None and policy not in MIXED:
            raise ValueError(f"unknown policy {policy!r}: None (the input's dtype) or one of {', '.join(MIXED)}")
        self.keras_backend, self.policy = keras_backend, policy
        self.name = f"{KERAS3_BATCHNORM.name}[{keras_backend}" + (f", {policy}]" if policy else "]")
        self.dtypes = (MIXED[policy],) if policy else ALL_DTYPES
        self.env = {**_ENV, "KERAS_BACKEND": keras_backend, **_BACKEND_ENV[keras_backend]}
        self._layers: OrderedDict = OrderedDict()

    def __getstate__(self):  # the child builds its own layers
        return {**self.__dict__, "_layers": OrderedDict()}

    def precision(self, dtype: str, device: str):
        """Computed in result_type(dtype, float32); gamma, beta and moving statistics in the variable dtype.
        TensorFlow's and XLA's CPU runtimes flush subnormals to zero (FTZ/DAZ; observed: y = 2**-126 * 0.1049
        comes back 0 on both, 1.2e-39 on torch)."""
        stats = "float32" if self.policy else dtype
        flush = self.keras_backend in ("tensorflow", "jax") and device == "cpu"
        return precision_for(dtype, stats=stats, variance=_variance_algorithm(self.keras_backend), flush_subnormals=flush)

    def versions(self) -> dict[str, str]:
        """Installed distributions, read from package metadata (nothing is imported)."""
        return {name: v for name, v in ((n, _version(*dists)) for n, dists in _DISTRIBUTIONS[self.keras_backend]) if v}

    def run(self, mode: Mode, r: Request) -> Outputs:
        keras = _keras(self.keras_backend)
        policy = self.policy or r.dtype
        if r.dtype not in self.dtypes:
            raise ValueError(f"{self.name} takes {', '.join(self.dtypes)} inputs, not {r.dtype}")
        layer = self._layer(keras, r, policy)
        values = _variable_values(layer, r)
        if self.keras_backend == "jax":
            return _run_jax(self._layers, layer, values, mode, r, (self.name, policy))
        return (_run_tensorflow if self.keras_backend == "tensorflow" else _run_torch)(layer, values, mode, r)

    def _layer(self, keras, r: Request, policy: str):
        """The built layer for this (rank, channels, policy, axis, affine) signature, from a bounded cache: what
        `build` depends on (variables of shape (C,), an input spec of rank and channels), so one layer serves every
        batch and spatial size, as in a model."""
        key = ("layer", r.x.ndim, r.x.shape[r.axis], policy, r.axis, r.gamma is not None)
        layer = self._layers.pop(key, None)
        if layer is None:
            layer = keras.layers.BatchNormalization(
                axis=r.axis, center=r.gamma is not None, scale=r.gamma is not None, dtype=policy,
                **(_HOST_INITIALIZERS if self.keras_backend == "jax" else {}),
            )
            layer.build(r.x.shape)
        _remember(self._layers, key, layer)
        layer.momentum = 0.0 if r.momentum is None else float(r.momentum)
        layer.epsilon = float(r.eps)
        return layer


class _HostFill:
    """A variable initializer that fills a NumPy array on the host and puts it on the device as it is: under JAX,
    Keras's own ("zeros", "ones") run jnp.zeros / jnp.ones eagerly, and a bfloat16 NumPy value is cast by
    jnp.astype, each compiling a program for every new channel count (27 of 53 layer builds in a fresh child,
    0.4 s of a 2.3 s battery); the values are the same."""

    def __init__(self, value: float):
        self.value = value

    def __call__(self, shape, dtype=None):
        import jax
        import jax.numpy as jnp  # jnp.dtype: the NumPy dtype of a Keras dtype name, bfloat16 included (ml_dtypes)

        return jax.device_put(np.full(shape, self.value, dtype=jnp.dtype(dtype)))


# the layer's defaults (gamma 1, beta 0, moving mean 0, moving variance 1), filled on the host
_HOST_INITIALIZERS = {"gamma_initializer": _HostFill(1.0), "beta_initializer": _HostFill(0.0),
                      "moving_mean_initializer": _HostFill(0.0), "moving_variance_initializer": _HostFill(1.0)}


def _remember(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)


def _keras(expected_backend: str):
    import keras

    if keras.backend.backend() != expected_backend:
        raise RuntimeError(
            f"keras runs the {keras.backend.backend()!r} backend in this process, not {expected_backend!r}: "
            f"set KERAS_BACKEND={expected_backend} before keras is imported (BACKENDS does this in a child process)"
        )
    return keras


def _variable_values(layer, r: Request) -> dict[str, np.ndarray]:
    """gamma, beta, moving_mean, moving_variance as the request gives them (layer defaults where None)."""
    c = r.x.shape[r.axis]
    dtype = layer.variable_dtype
    values = {
        "moving_mean": np.zeros(c) if r.running_mean is None else r.running_mean,
        "moving_variance": np.ones(c) if r.running_var is None else r.running_var,
    }
    if r.gamma is not None:
        values["gamma"], values["beta"] = r.gamma, r.beta
    return {k: np.asarray(v, dtype=np.float64).astype(dtype) for k, v in values.items()}


def _outputs(mode: Mode, r: Request, y, moving_mean, moving_variance) -> Outputs:
    """y, and the moving statistics after the call (updated in training, to be unchanged in eval) when the
    request gave some."""
    out = Outputs(y=_float64(y))
    if r.running_mean is not None:
        out.running_mean, out.running_var = _float64(moving_mean), _float64(moving_variance)
    return out


def _float64(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu().float() if str(a.dtype) == "torch.bfloat16" else a.detach().cpu()
    return np.asarray(a).astype(np.float64)


def _assign(layer, values: dict) -> None:
    for name, value in values.items():
        getattr(layer, name).assign(value)


def _gradients(mode: Mode, r: Request, dx, dgamma, dbeta) -> Outputs:
    affine = r.gamma is not None
    return Outputs(dx=_float64(dx), dgamma=_float64(dgamma) if affine else None, dbeta=_float64(dbeta) if affine else None)


def _run_tensorflow(layer, values, mode: Mode, r: Request) -> Outputs:
    """Eager call; gradients of sum(y * dy) from tf.GradientTape."""
    import tensorflow as tf

    _assign(layer, values)
    x = tf.cast(tf.constant(r.x, dtype=tf.float64), r.dtype)  # exact: the values are representable
    training = mode in TRAINING
    if mode not in BACKWARD:
        y = layer(x, training=training)
        return _outputs(mode, r, y.numpy(), layer.moving_mean.numpy(), layer.moving_variance.numpy())
    params = [layer.gamma, layer.beta] if r.gamma is not None else []
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
    dy = tf.constant(r.dy, dtype=tf.float64)
    grads = tape.gradient(y, [x, *params], output_gradients=tf.cast(dy, y.dtype))
    grads = [g.numpy() if hasattr(g, "numpy") else g for g in grads] + [None, None]
    return _with_state(mode, r, layer, _gradients(mode, r, grads[0], grads[1], grads[2]))


def _with_state(mode: Mode, r: Request, layer, out: Outputs) -> Outputs:
    """An eval backward's outputs with the layer's moving statistics read back after the call."""
    if mode is Mode.EVAL_BACKWARD and r.running_mean is not None:
        out.running_mean = _float64(layer.moving_mean.value)
        out.running_var = _float64(layer.moving_variance.value)
    return out


def _run_torch(layer, values, mode: Mode, r: Request) -> Outputs:
    """Eager call; gradients of sum(y * dy) from torch.autograd.grad (no .grad accumulates on the cached layer)."""
    import torch

    _assign(layer, values)
    dtype = getattr(torch, r.dtype)
    x = torch.tensor(r.x, dtype=torch.float64).to(dtype).requires_grad_(mode in BACKWARD)
    training = mode in TRAINING
    if mode not in BACKWARD:
        with torch.no_grad():
            y = layer(x, training=training)
        return _outputs(mode, r, y, layer.moving_mean.value, layer.moving_variance.value)
    params = [layer.gamma.value, layer.beta.value] if r.gamma is not None else []
    y = layer(x, training=training)
    dy = torch.tensor(r.dy, dtype=torch.float64).to(y.dtype)
    grads = list(torch.autograd.grad(y, [x, *params], grad_outputs=dy)) + [None, None]
    return _with_state(mode, r, layer, _gradients(mode, r, grads[0], grads[1], grads[2]))


class _Momentum:
    """The layer's momentum inside a jitted call, as traced values: `moving * momentum` multiplies by the
    momentum and `1.0 - momentum` gives 1 - momentum computed in double precision and rounded once, exactly
    what the Python float the layer normally holds gives, so that one compiled function serves every momentum."""

    def __init__(self, momentum, one_minus):
        self.momentum, self.one_minus = momentum, one_minus

    def __rmul__(self, other):
        return other * self.momentum

    __mul__ = __rmul__

    def __rsub__(self, other):
        if other != 1.0:
            raise ValueError(f"the layer computed {other!r} - momentum; only 1.0 - momentum is traced")
        return self.one_minus


def _run_jax(cache: OrderedDict, layer, values, mode: Mode, r: Request, name: tuple) -> Outputs:
    """layer.stateless_call under jax.jit, compiled once per (signature, mode): momentum and epsilon are
    arguments, not constants, so Hypothesis's momenta do not recompile; gradients of sum(y * dy) from jax.vjp.
    The compiled executables persist across processes (adapters/jax_cache.py), keyed by `name` (the backend's
    name and policy), the layer's axis and affine switch, the mode and the arguments."""
    import jax
    import jax.numpy as jnp

    from . import jax_cache

    key = ("jit", id(layer), mode)
    fn = cache.pop(key, None) or jax.jit(_stateless(layer, mode))  # eager op-by-op is slower, new shapes too
    _remember(cache, key, fn)
    compute = "float64" if r.dtype == "float64" else "float32"
    # NumPy arrays cast by NumPy (ml_dtypes for bfloat16; exact: the values arrive rounded to their formats), put on
    # the device by jax.device_put: no conversion program is compiled for each new shape
    put = lambda a, dtype=None: jax.device_put(np.asarray(a, dtype=None if dtype is None else jnp.dtype(dtype)))  # noqa: E731
    trainable = [put(values[n]) for n in ("gamma", "beta") if n in values]
    non_trainable = [put(values["moving_mean"]), put(values["moving_variance"])]
    momentum = 0.0 if r.momentum is None else float(r.momentum)
    scalars = [put(v, compute) for v in (momentum, 1.0 - momentum, r.eps)]
    x = put(r.x, r.dtype)
    program = jax_cache.Program((*name, r.axis % r.x.ndim, r.gamma is not None, mode), ("keras",), (__file__,))
    device = jax.devices("cpu")[0]
    if mode in BACKWARD:
        args = (trainable, non_trainable, x, *scalars, put(r.dy, r.dtype))
        dx, dparams = jax_cache.call(fn, args, program, device)
        return _gradients(mode, r, dx, *(list(dparams) + [None, None])[:2])
    args = (trainable, non_trainable, x, *scalars)
    y, (moving_mean, moving_variance) = jax_cache.call(fn, args, program, device)
    return _outputs(mode, r, y, moving_mean, moving_variance)


def _stateless(layer, mode: Mode):
    """The pure function (trainable, non_trainable, x, momentum, 1 - momentum, eps[, dy]) -> outputs."""
    import jax

    training = mode in TRAINING

    def forward(trainable, non_trainable, x, momentum, one_minus, eps):
        saved = layer.momentum, layer.epsilon
        layer.momentum, layer.epsilon = _Momentum(momentum, one_minus), eps
        try:
            return layer.stateless_call(trainable, non_trainable, x, training=training)
        finally:
            layer.momentum, layer.epsilon = saved

    if mode not in BACKWARD:
        return forward

    def backward(trainable, non_trainable, x, momentum, one_minus, eps, dy):
        _, pullback = jax.vjp(lambda x_, t_: forward(t_, non_trainable, x_, momentum, one_minus, eps)[0], x, trainable)
        return pullback(dy)

    return backward


def _installed(keras_backend: str) -> bool:
    return importlib.util.find_spec(keras_backend) is not None


# the backends the children run, one per Keras backend and policy; and the proxies this process sees
LAYERS = [KerasBatchNorm(b, policy) for b in KERAS_BACKENDS for policy in (None, *MIXED)]
BACKENDS = [
    SubprocessBackend("bnconf.adapters.keras_batchnorm:LAYERS", name=b.name, env=b.env, local=b)
    for b in LAYERS
    if _installed(b.keras_backend)
]
