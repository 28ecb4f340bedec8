"""What the JAX adapters (Flax linen and NNX, Haiku, Equinox) share: dtypes and devices, float64 through a
scoped `jax_enable_x64`, one jitted program per static signature kept in a bounded cache, gradients by jax.vjp.

A library adapter subclasses `JaxBackend` and writes one pure function, `forward(step, x, gamma, beta,
state, eps, momentum) -> (y, running)`, that builds the library's module from the arguments and calls it;
`state_from` turns the request's running statistics into the library's own state. `running` holds the
library's state after the call, read back in every mode when the request tracks statistics
({running_mean, running_var[, batches_seen]}; updated in training, to be unchanged in eval). eps and momentum reach
`forward` as traced, weakly typed scalars (what a Python float becomes inside jit), so the module is
built from them exactly as from Python floats and one compiled program serves every value: `jax.jit`
compiles once per (program, shapes, dtypes), and the programs live in an `lru_cache` (one per backend and
`Step`, a bounded set: 4 modes x 4 dtypes x axes x affine). Whether the request tracks running statistics is
not part of the program (the untracked state is the layer's initial one, passed like any other), so both
share one compilation. The compiled executables persist across processes (`jax_cache.call`: a later worker
loads them without tracing or compiling), and the arrays reach the device from NumPy (`jax.device_put`), so no
per-shape conversion program is compiled either. A library adapter names the packages its program comes from
(`packages`, part of the cache's key with its own source file).
"""

import contextlib
import functools
import sys
from collections import Counter
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..spec import Mode, Precision, precision_for
from . import jax_cache
from .protocol import Outputs, Request, check_request

JAX_DTYPES = {"float64": jnp.float64, "float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}
TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)

# traces per backend name: a program body runs once per compilation (read by tests/adapters/test_jax.py)
TRACES: Counter = Counter()


def x64(dtype: str):
    """float64 needs jax_enable_x64; the setting is thread-local inside `jax.enable_x64` and restored on exit,
    so no other adapter or test sees it. Other dtypes run under whatever the caller has set."""
    return jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext()


def wide(dtype: str) -> str:
    """The format a mixed-precision layer keeps its parameters and statistics in: float64 or float32."""
    return "float64" if dtype == "float64" else "float32"


def jax_precision(dtype: str, device: str, **kw) -> Precision:
    """`precision_for(dtype, **kw)`, with subnormals flushed to zero on CPU: XLA's CPU runtime sets FTZ/DAZ
    (observed: a float32 eval y of -1.55e-39 comes out 0.0), as for Keras on JAX."""
    return precision_for(dtype, flush_subnormals=device == "cpu", **kw)


def gpu_unavailable() -> str | None:
    try:
        jax.devices("gpu")
    except RuntimeError as e:
        return f"JAX has no GPU backend here ({str(e).splitlines()[0]})"
    return None


@dataclass(frozen=True)
class Step:
    """The static part of a call: everything else (shapes aside) is a traced argument. Whether running statistics
    are tracked is not: the program is the same (the untracked state is the layer's initial one), and `run`
    decides what it reads back."""

    mode: Mode
    dtype: str
    axis: int  # non-negative
    affine: bool

    @property
    def training(self) -> bool:
        return self.mode in TRAINING


def _program(backend, step: Step, x, gamma, beta, state, eps, momentum, dy):
    """The traced body: forward, and its vector-Jacobian product with dy in the backward modes."""
    TRACES[backend.name] += 1

    def forward(x, gamma, beta):
        return backend.forward(step, x, gamma, beta, state, eps, momentum)

    if step.mode in BACKWARD:
        y, pullback, running = jax.vjp(forward, x, gamma, beta, has_aux=True)
        dx, dgamma, dbeta = pullback(dy.astype(y.dtype))
        return {"dx": dx, "dgamma": dgamma, "dbeta": dbeta, **running}
    y, running = forward(x, gamma, beta)
    return {"y": y, **running}


@functools.lru_cache(maxsize=1024)
def compiled(backend, step: Step):
    """One jitted program per (backend, static signature); jit itself compiles once per shape and dtype."""
    return jax.jit(functools.partial(_program, backend, step))


def _numpy(a) -> np.ndarray | None:
    return None if a is None else np.asarray(a).astype(np.float64)


class JaxBackend:
    """The protocol's side of a JAX batch norm: checks, casts, devices, the cached jitted program, outputs."""

    modes = frozenset(Mode)
    dtypes = tuple(JAX_DTYPES)
    devices = ("cpu", "gpu")
    packages: tuple[str, ...] = ()  # import names of the library the program calls (jax_cache's key)

    def versions(self) -> dict[str, str]:
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, **self.library_versions()}

    def unavailable(self, device: str) -> str | None:
        return gpu_unavailable() if device == "gpu" else None

    def parameter_dtype(self, dtype: str) -> str:
        """The format gamma and beta are held in (mixed precision by default: float32 for half inputs)."""
        return wide(dtype)

    def run(self, mode: Mode, r: Request) -> Outputs:
        check_request(self, mode, r)
        step = Step(mode, r.dtype, r.axis % r.x.ndim, r.gamma is not None)
        tracked = r.running_mean is not None
        with x64(r.dtype):
            device = jax.devices(r.device)[0]
            # cast by NumPy (ml_dtypes for bfloat16), exact: the values arrive rounded to their formats
            put = lambda a, dtype: None if a is None else jax.device_put(np.asarray(a, JAX_DTYPES[dtype]), device)  # noqa: E731
            pdt = self.parameter_dtype(r.dtype)
            args = (
                put(r.x, r.dtype), put(r.gamma, pdt), put(r.beta, pdt),
                jax.device_put(self.state_from(step, r), device),
                float(r.eps), float(0.0 if r.momentum is None else r.momentum),  # traced, weakly typed
                put(r.dy, r.dtype),
            )
            program = jax_cache.Program((self.name, type(self).__qualname__, step), self.packages,
                                        (__file__, sys.modules[type(self).__module__].__file__))
            result = jax_cache.call(compiled(self, step), args, program, device)
            out = {k: _numpy(v) for k, v in jax.device_get(result).items()}
        if step.mode in BACKWARD:
            result = Outputs(dx=out["dx"], dgamma=out["dgamma"], dbeta=out["dbeta"])
        else:
            result = Outputs(y=out["y"])
        # the state after the call: updated by a training forward, to be unchanged by an eval call
        if tracked and step.mode is not Mode.TRAIN_BACKWARD and "running_mean" in out:
            result.running_mean, result.running_var = out["running_mean"], out["running_var"]
            if step.training and "batches_seen" in out:
                result.batches_seen = int(out["batches_seen"])
        return result
