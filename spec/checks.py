"""Checks of bad input at bnconf's public entry points: one error type, a message that says what is wrong.

Every message names the argument, what was given and what is expected, e.g.

    gamma has shape (3,), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))

The checks read shapes, dtypes and scalars only (no pass over the data), so calling them first costs
nothing next to the computation. `spec.oracle`, `spec.expect.expected` and the adapters'
`check_request` all use them, so that the rules exist once.
"""

import math

import numpy as np

from .formats import FORMATS


class InputError(ValueError, TypeError):
    """Bad input to bnconf: a wrong value or a wrong type, named with what is expected.

    A ValueError and a TypeError both, so that code catching either (NumPy's habit) still catches it.
    """


def shape_text(shape) -> str:
    """(3,) and (2, 4, 5) as Python prints them."""
    return str(tuple(int(n) for n in shape))


def real_array(a, name: str) -> np.ndarray:
    """`a` as an array of real numbers (float, integer, or a float format bnconf knows, e.g. bfloat16)."""
    arr = np.asarray(a)
    if not (arr.dtype.kind in "fiu" or arr.dtype.name in FORMATS):
        raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}: pass a float or integer array")
    return arr


def integer(name: str, value, at_least: int | None = None) -> int:
    """`value` as an int (Python or NumPy integer, not bool), >= `at_least` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if at_least is not None and value < at_least:
        raise InputError(f"{name} must be an integer >= {at_least}, got {value!r}")
    return int(value)


def axis_index(shape, axis) -> int:
    """The channel axis `axis` of an x of `shape`, as a non-negative index."""
    ndim = len(shape)
    integer("the channel axis", axis)
    if ndim < 2:
        raise InputError(f"x has shape {shape_text(shape)}, expected rank 2 or more: a batch axis and a channel axis")
    if not -ndim <= axis < ndim:
        raise InputError(f"channel axis {axis} is out of range for x of shape {shape_text(shape)}: "
                         f"expected an integer from {-ndim} to {ndim - 1}")
    return int(axis) % ndim


def finite_number(name: str, value, at_least: float = -math.inf) -> float:
    """`value` as a float, which must be a finite real number >= `at_least`."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InputError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and value >= at_least):
        bound = "" if at_least == -math.inf else f" >= {at_least:g}"
        raise InputError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


def eps_value(eps) -> float:
    """eps as a float, which must be finite and >= 0."""
    return finite_number("eps", eps, at_least=0)


def dtype_name(dtype) -> str:
    """The name of a floating-point format bnconf knows: float64, float32, float16 or bfloat16."""
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in FORMATS:
        raise InputError(f"dtype {name!r} is not a floating-point format bnconf knows: expected one of {', '.join(FORMATS)}")
    return name


def per_channel(name: str, value, shape, axis: int) -> None:
    """`value` (gamma, beta, a running statistic) holds one real number per channel of an x of `shape`."""
    if value is None:
        return
    channels = shape[axis]
    got = np.shape(value)
    if got != (channels,):
        raise InputError(f"{name} has shape {shape_text(got)}, expected ({channels},): one value per channel of x "
                         f"(axis {axis} of shape {shape_text(shape)})")
    real_array(value, name)


def like_x(name: str, value, shape) -> None:
    """`value` (dy) has the shape of x."""
    if value is not None and np.shape(value) != tuple(shape):
        raise InputError(f"{name} has shape {shape_text(np.shape(value))}, expected {shape_text(shape)}: the shape of x")
    if value is not None:
        real_array(value, name)


def running_stats(running, shape, axis: int) -> None:
    """`running` is a RunningStats(mean, var, count) with one mean and variance per channel and a count >= 0."""
    if running is None:
        return
    if not all(hasattr(running, a) for a in ("mean", "var", "count")):
        raise InputError(f"running must be a spec.RunningStats(mean, var, count), got {type(running).__name__}")
    per_channel("running.mean", running.mean, shape, axis)
    per_channel("running.var", running.var, shape, axis)
    integer("running.count (the batches the running statistics have seen)", running.count, at_least=0)


def batch(x, axis, *, running=None, **arrays) -> int:
    """Check one batch-norm problem before any arithmetic; return the channel axis as a non-negative index.

    `arrays` name the other arrays: `dy` must have x's shape, any other (gamma, beta, running_mean, ...)
    one value per channel; `running` is a RunningStats. None means absent.
    """
    shape = np.shape(real_array(x, "x"))
    axis = axis_index(shape, axis)
    if shape[axis] == 0:
        raise InputError(f"x has no channels: its size along the channel axis {axis} is 0 (shape {shape_text(shape)})")
    for name, value in arrays.items():
        if name == "dy":
            like_x(name, value, shape)
        else:
            per_channel(name, value, shape, axis)
    running_stats(running, shape, axis)
    return axis
