"""What an exception from a backend means: a refusal (the backend says "this input is invalid") or a crash.

One definition, shared by the edge-case battery (conformance/edge.py) and convention inference
(conformance/inference.py). A refusal is

  * a `ValueError` (Python's argument error), unless NumPy raised it on the way (a reduction over an empty
    array is an accident, not a check). PyTorch's own checks raise it: 'Expected more than 1 value per channel
    when training', 'batch_norm eps must be positive during training', 'expected 2D or 3D input'; so do JAX's
    ('Incompatible shapes for broadcasting'), jax.experimental.checkify's failed `check` (its JaxRuntimeError
    subclasses ValueError), Keras 3's ('Argument synchronized=True is only supported with the TensorFlow
    backend') and bnconf's own `spec.InputError`;
  * an `ArithmeticError` (`ZeroDivisionError`, `FloatingPointError`, `OverflowError`): the arithmetic the
    input asks for is undefined, and the backend stops instead of returning NaN (`n / (n - 1)` at n = 1 in
    Python, NumPy under `errstate(all="raise")`);
  * an exception with a class named `InvalidArgumentError` in its MRO: TensorFlow's
    `tf.errors.InvalidArgumentError` (MRO InvalidArgumentError, OpError, Exception: not a ValueError), what its
    kernels raise for an invalid argument ('input must be 4-dimensional', 'scale must have the same number of
    elements as the channels of x'); recognized by name, no framework is imported here.

Anything else is a crash: a `TypeError` (so `adapters.protocol.OutputError`, a value bnconf cannot judge), an
`IndexError` (`torch.nn.BatchNorm1d(0)` on 0 channels: 'select(): index 0 out of range'; Keras 3's
`BatchNormalization(axis=5)` on a rank-2 input: 'tuple index out of range'), and a `RuntimeError`:
PyTorch raises it from its C++ checks ('running_mean should contain 3 elements not 2') and from internal
failures alike, JAX from any XLA runtime status (`jax.errors.JaxRuntimeError`), a subprocess backend when its
child dies. None of the spec's edge inputs makes an installed framework raise a RuntimeError (observed with
torch 2.13.0, tensorflow 2.21.0, keras 3.15.1 on its three backends, jax 0.10.2, flax 0.12.8, dm-haiku 0.0.17,
equinox 0.13.8: they refuse with ValueError or accept), and the parameter shape mismatches PyTorch refuses
with one never reach a framework: bnconf's request checks refuse them first.
"""

from enum import Enum
import os
import re
import traceback

REFUSAL_CLASS_NAMES = frozenset({"InvalidArgumentError"})  # tensorflow.python.framework.errors_impl


class Behaviour(Enum):
    """What a backend did with an input: returned values, refused it, or crashed."""

    VALUES = "values"
    REFUSAL = "refuses"
    CRASH = "crashes"


def is_refusal(e: BaseException) -> bool:
    """The backend refused the input (see the module docstring for the exact types)."""
    if isinstance(e, ArithmeticError):
        return True
    if isinstance(e, ValueError):
        return not _numpy_accident(e)
    return any(c.__name__ in REFUSAL_CLASS_NAMES for c in type(e).__mro__)


def behaviour_of(e: BaseException) -> Behaviour:
    """REFUSAL or CRASH."""
    return Behaviour.REFUSAL if is_refusal(e) else Behaviour.CRASH


def _numpy_accident(e: BaseException) -> bool:
    """The innermost frame is in NumPy's own code."""
    where = raised_in(e) or ""
    return f"{os.sep}numpy{os.sep}" in where


def raised_in(e: BaseException) -> str | None:
    """The file of the innermost frame, in this process or in a child process (subprocess_backend's note)."""
    for note in reversed(getattr(e, "__notes__", ())):
        files = re.findall(r'File "([^"]+)"', note)
        if files:
            return files[-1]
    frames = traceback.extract_tb(e.__traceback__)
    return frames[-1].filename if frames else None


__all__ = ["Behaviour", "REFUSAL_CLASS_NAMES", "behaviour_of", "is_refusal", "raised_in"]
