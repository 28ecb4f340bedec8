"""What every TensorFlow adapter shares: quiet start-up, dtypes, tensors in and out, GPU check, gradients.

Importing this module imports TensorFlow once per process (TF_CPP_MIN_LOG_LEVEL is set first, unless the
user set it, to keep C++ log lines out of reports). Only TensorFlow adapter modules
import it: the registry reaches it through them, and a missing TensorFlow surfaces there as
ModuleNotFoundError("tensorflow").
"""

import os

# Before the import: read when the library loads. "3" also hides the cuInit error of CPU-only machines;
# failures still reach Python as exceptions. (TF 2.21 prints a few lines before absl logging starts,
# whatever this says: absl logs everything before absl::InitializeLog(), abseil/abseil-cpp#1718.)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")

TF_DTYPES = {"float64": tf.float64, "float32": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}
HALF = ("float16", "bfloat16")
DEVICE_NAMES = {"cpu": "/CPU:0", "gpu": "/GPU:0"}


def tf_dtype(dtype: str) -> tf.DType:
    """The TensorFlow dtype for a bnconf dtype name, or a ValueError naming the ones known."""
    try:
        return TF_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} has no TensorFlow counterpart here; known: {', '.join(TF_DTYPES)}") from None


def param_dtype(dtype: str) -> str:
    """The dtype of parameters and statistics beside `dtype` inputs: float32 for half inputs, else the same."""
    return "float32" if dtype in HALF else dtype


def tensor(a, dtype: str) -> tf.Tensor:
    """A new tensor of `dtype` from a float64 array (rounded once, float64 -> dtype)."""
    return tf.cast(tf.constant(np.asarray(a, dtype=np.float64)), tf_dtype(dtype))


def optional_tensor(a, dtype: str) -> tf.Tensor | None:
    return None if a is None else tensor(a, dtype)


def numpy(t) -> np.ndarray | None:
    """A float64 NumPy array from a tensor (None stays None)."""
    return None if t is None else tf.cast(t, tf.float64).numpy()


def gpu_unavailable(device: str) -> str | None:
    """None when `device` can run now; a reason when it is "gpu" and TensorFlow sees no GPU."""
    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        return f"TensorFlow {tf.__version__} sees no GPU (tf.config.list_physical_devices('GPU') is empty)"
    if device not in DEVICE_NAMES:
        return f"unknown device {device!r}; TensorFlow adapters know {', '.join(DEVICE_NAMES)}"
    return None


def flush(device: str) -> dict:
    """precision_for's flush_subnormals for `device`: TensorFlow runs every CPU kernel with FTZ/DAZ set
    (tensorflow/core/common_runtime/eager/kernel_and_device.cc KernelAndDeviceOp::Run and the intra-op
    thread pool, tsl/platform/threadpool.cc EigenEnvironment::CreateThread: `port::ScopedFlushDenormal
    flush;`), float64 included: tf.constant(1e-39) * 1.0 is 0 on TF 2.21. GPU: not measured, not declared."""
    return {"flush_subnormals": device == "cpu"}


def device_scope(device: str):
    """A `tf.device` context placing ops on bnconf's `device` ("cpu" or "gpu")."""
    if device not in DEVICE_NAMES:
        raise ValueError(f"unknown device {device!r}; TensorFlow adapters know {', '.join(DEVICE_NAMES)}")
    return tf.device(DEVICE_NAMES[device])


def versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__}


def tape_gradients(forward, x: tf.Tensor, gamma, beta, dy: tf.Tensor):
    """(y, dx, dgamma, dbeta): `forward(x, gamma, beta) -> y` and the gradients of sum(y * dy).

    gamma/beta None are not watched and their gradients stay None. dy is cast to y's dtype, so the
    upstream gradient enters the graph in the output's format, as it would in a training step.
    """
    watched = [t for t in (x, gamma, beta) if t is not None]
    with tf.GradientTape() as tape:
        for t in watched:
            tape.watch(t)
        y = forward(x, gamma, beta)
    grads = iter(tape.gradient(y, watched, output_gradients=tf.cast(dy, y.dtype)))
    dx = next(grads)
    dgamma = None if gamma is None else next(grads)
    dbeta = None if beta is None else next(grads)
    return y, dx, dgamma, dbeta
