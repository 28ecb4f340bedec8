"""TensorFlow's functional batch norm behind the adapter protocol.

1. `tf.nn.moments` + `tf.nn.batch_normalization`, run eagerly and inside a `tf.function` (traced once per
   (shape, dtype, channel axis, affine, backward) signature, cached in a bounded LRU):
       mean, var = moments(x, axes)                      biased variance; float16 reduced in float32
       y = x * inv + (beta - mean * inv),  inv = rsqrt(var + eps) * gamma   (in x's dtype)
   No running statistics (the caller keeps them), so training modes only; the channel axis is whichever
   axis the reduction leaves out (last or first here). saved_mean/saved_var are the moments it normalizes
   with.
2. `tf.compat.v1.nn.fused_batch_norm` (FusedBatchNormV3), NHWC/NCHW (NDHWC/NCDHW for 5-D), training and
   inference. Returns y, the running mean and the running variance averaged with the Bessel-corrected batch
   variance (n/(n-1), n-1 floored at 1) while y is normalized with the biased one. In inference the op keeps
   no state (the caller's statistics are immutable tensors): the eval modes return none. The wrapper drops the
   op's reserve spaces (nn_impl.py::fused_batch_norm); on CPU reserve_space_1 is the batch mean and
   reserve_space_2 the *biased* batch variance (both the Eigen and the oneDNN kernel; checked on TF 2.21),
   which is what bnconf's saved_mean/saved_var mean, so the training forward reads them from
   tf.raw_ops.FusedBatchNormV3 called with the wrapper's own arguments. On GPU cuDNN stores the inverse
   standard deviation in reserve_space_2 instead; unverified here, so nothing is exposed there.
   The op takes x in float32/float16/bfloat16 only (float64 is rejected), with float32 scale, offset
   and statistics.

Gradients (dx, dgamma, dbeta of sum(y * dy)) come from tf.GradientTape. Precision on CPU, TF 2.21 (every
kernel runs with subnormals flushed to zero, see tensorflow_common.flush):
fused float32/bfloat16 run oneDNN, float16 the Eigen kernel (fused_batch_norm_op.cc casts x to U=float);
all compute in float32. tf.nn.moments casts float16 to float32 for the statistics and returns them
rounded to float16, but reduces bfloat16 in bfloat16 elementwise (squared_difference) with float32 sums
(reduction_ops.h CASTING_SPECIALIZATION(bfloat16, float)); batch_normalization then computes in x's dtype.
"""

from functools import lru_cache

from ..spec import Mode, precision_for
from ..spec.conventions import TF_FUSED_BATCH_NORM, TF_NN_BATCH_NORMALIZATION
from . import tensorflow_common as tfc
from .protocol import Outputs, Request, check_request

tf = tfc.tf
TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
TRACE_CACHE_SIZE = 64  # compiled signatures kept per backend; a test run sees a few dozen shapes


def reduction_axes(rank: int, channel_axis: int) -> list[int]:
    """Every axis but the channel axis: what batch norm reduces over."""
    if not -rank <= channel_axis < rank:
        raise ValueError(f"channel axis {channel_axis} is out of range for a rank-{rank} input")
    return [a for a in range(rank) if a != channel_axis % rank]


def _broadcast_shape(rank: int, channel_axis: int, channels: int) -> list[int]:
    shape = [1] * rank
    shape[channel_axis % rank] = channels
    return shape


class _TfBackend:
    """Devices, versions and the gradient plumbing both adapters share."""

    devices = ("cpu", "gpu")

    def versions(self) -> dict[str, str]:
        return tfc.versions()

    def unavailable(self, device: str) -> str | None:
        return tfc.gpu_unavailable(device)


# ---------------------------------------------------------------- tf.nn.moments + tf.nn.batch_normalization


def moments_normalize(x, gamma, beta, axes: list[int], eps: float):
    """(y, mean, var): tf.nn.moments over `axes` (keepdims), then tf.nn.batch_normalization.

    gamma/beta arrive already shaped to broadcast against x (or None)."""
    mean, var = tf.nn.moments(x, axes=axes, keepdims=True)
    y = tf.nn.batch_normalization(x, mean, var, offset=beta, scale=gamma, variance_epsilon=eps)
    return y, mean, var


def _nn_step(axes: list[int], backward: bool):
    """The computation one request runs, step(x, gamma, beta, eps[, dy]): forward (y, mean, var) or
    backward (dx, dgamma, dbeta)."""
    if not backward:
        return lambda x, gamma, beta, eps: moments_normalize(x, gamma, beta, axes, eps)

    def gradients(x, gamma, beta, eps, dy):
        forward = lambda x_, g, b: moments_normalize(x_, g, b, axes, eps)[0]  # noqa: E731
        _, dx, dgamma, dbeta = tfc.tape_gradients(forward, x, gamma, beta, dy)
        return dx, dgamma, dbeta

    return gradients


class NnBatchNormalization(_TfBackend):
    """tf.nn.moments(x, axes) then tf.nn.batch_normalization(x, mean, var, beta, gamma, eps).

    `compiled`: run it inside a tf.function, traced once per signature (see `compiled_step`)."""

    convention = TF_NN_BATCH_NORMALIZATION
    modes = frozenset(TRAINING)  # no running statistics: eval would need the caller's own
    dtypes = tuple(tfc.TF_DTYPES)
    channel_axes = (-1, 1)
    ranks = TF_NN_BATCH_NORMALIZATION.ranks

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self.name = "tf.nn.batch_normalization" + ("[tf.function]" if compiled else "[eager]")
        self.traces = 0  # how many times a tf.function was traced (counted at trace time)
        self.compiled_step = lru_cache(maxsize=TRACE_CACHE_SIZE)(self._compile)

    def precision(self, dtype: str, device: str):
        if dtype in tfc.HALF:  # y = x * inv + (...) in the half format; sums in float32
            return precision_for(dtype, compute=dtype, accumulate="float32", stats=dtype, **tfc.flush(device))
        return precision_for(dtype, **tfc.flush(device))

    def _compile(self, shape: tuple, dtype: str, axis: int, affine: bool, backward: bool):
        """A tf.function for one signature (eps is a scalar argument, not part of it), with a fixed
        input_signature so that it traces exactly once: traced(x, eps[, gamma, beta][, dy])."""
        rank = len(shape)
        step = _nn_step(reduction_axes(rank, axis), backward)
        dt = tfc.tf_dtype(dtype)
        x_spec, p_spec = tf.TensorSpec(shape, dt), tf.TensorSpec(_broadcast_shape(rank, axis, shape[axis]), dt)
        specs = [x_spec, tf.TensorSpec([], dt)] + ([p_spec, p_spec] if affine else []) + ([x_spec] if backward else [])

        def traced(x, eps, *rest):
            self.traces += 1  # a Python side effect: runs once per trace, never per call
            gamma, beta, rest = (rest[0], rest[1], rest[2:]) if affine else (None, None, rest)
            return step(x, gamma, beta, eps, *rest)

        return tf.function(traced, input_signature=specs)

    def run(self, mode: Mode, r: Request) -> Outputs:
        backward = mode in BACKWARD
        if mode not in self.modes:
            raise ValueError(f"{self.name} has no {mode.value}: it keeps no running statistics")
        check_request(self, mode, r)
        rank, affine = r.x.ndim, r.gamma is not None
        pshape = _broadcast_shape(rank, r.axis, r.x.shape[r.axis])
        x = tfc.tensor(r.x, r.dtype)
        gamma, beta = (tf.reshape(tfc.tensor(p, r.dtype), pshape) for p in (r.gamma, r.beta)) if affine else (None, None)
        dy = (tfc.tensor(r.dy, r.dtype),) if backward else ()
        with tfc.device_scope(r.device):
            if self.compiled:  # eps enters as a tensor of x's dtype, as batch_normalization converts it
                fn = self.compiled_step(tuple(r.x.shape), r.dtype, r.axis % rank, affine, backward)
                out = fn(x, tf.constant(r.eps, tfc.tf_dtype(r.dtype)), *((gamma, beta) if affine else ()), *dy)
            else:
                out = _nn_step(reduction_axes(rank, r.axis), backward)(x, gamma, beta, float(r.eps), *dy)
        if backward:
            dx, dgamma, dbeta = (tfc.numpy(t) for t in out)
            flat = (lambda g: None if g is None else g.reshape(-1))
            return Outputs(dx=dx, dgamma=flat(dgamma), dbeta=flat(dbeta))
        y, mean, var = (tfc.numpy(t) for t in out)
        return Outputs(y=y, saved_mean=mean.reshape(-1), saved_var=var.reshape(-1))


# ---------------------------------------------------------------- tf.compat.v1.nn.fused_batch_norm

FUSED_FORMATS = {(4, "last"): "NHWC", (4, "first"): "NCHW", (5, "last"): "NDHWC", (5, "first"): "NCDHW"}


class FusedBatchNorm(_TfBackend):
    """tf.compat.v1.nn.fused_batch_norm(x, scale, offset, mean, variance, epsilon, data_format, is_training,
    exponential_avg_factor): momentum is exponential_avg_factor, the weight of the new batch."""

    convention = TF_FUSED_BATCH_NORM
    modes = frozenset(Mode)
    dtypes = ("float32", "float16", "bfloat16")  # FusedBatchNormV3's T: half, bfloat16, float
    ranks = TF_FUSED_BATCH_NORM.ranks

    def __init__(self, channels: str):
        if channels not in ("last", "first"):
            raise ValueError(f"channels must be 'last' or 'first', got {channels!r}")
        self.channels = channels
        self.channel_axes = (-1,) if channels == "last" else (1,)
        self.name = f"tf.compat.v1.nn.fused_batch_norm[{FUSED_FORMATS[4, channels]}]"

    def precision(self, dtype: str, device: str):
        return precision_for(dtype, **tfc.flush(device))  # x cast to float32 for every statistic and output

    def data_format(self, rank: int, axis: int) -> str:
        if axis % rank != self.channel_axes[0] % rank:
            raise ValueError(f"{self.name} takes its channels on axis {self.channel_axes[0]}, got axis {axis}")
        if rank not in (4, 5):
            raise ValueError(f"fused_batch_norm takes 4-D or 5-D input, got rank {rank}")
        return FUSED_FORMATS[rank, self.channels]

    def run(self, mode: Mode, r: Request) -> Outputs:
        backward, training = mode in BACKWARD, mode in TRAINING
        check_request(self, mode, r)
        kwargs = self._arguments(r, training)
        x = tfc.tensor(r.x, r.dtype)
        scale, offset = self._affine(r)
        with tfc.device_scope(r.device):
            if backward:
                def forward(x_, g, b):  # g/b None: the fixed scale 1 / offset 0, not watched
                    return tf.compat.v1.nn.fused_batch_norm(
                        x_, scale if g is None else g, offset if b is None else b, **kwargs)[0]

                affine = r.gamma is not None
                _, dx, dgamma, dbeta = tfc.tape_gradients(
                    forward, x, scale if affine else None, offset if affine else None, tfc.tensor(r.dy, r.dtype))
                return Outputs(dx=tfc.numpy(dx), dgamma=tfc.numpy(dgamma), dbeta=tfc.numpy(dbeta))
            y, mean, var = tf.compat.v1.nn.fused_batch_norm(x, scale, offset, **kwargs)
            out = Outputs(y=tfc.numpy(y))
            if training and r.running_mean is not None:
                out.running_mean, out.running_var = tfc.numpy(mean), tfc.numpy(var)
            if training and r.device == "cpu":
                out.saved_mean, out.saved_var = self._reserve_spaces(x, scale, offset, kwargs)
        return out

    def _affine(self, r: Request):
        channels = r.x.shape[r.axis]
        if r.gamma is None:  # the op always scales and shifts: no affine = scale 1, offset 0
            return tf.ones([channels], tf.float32), tf.zeros([channels], tf.float32)
        stats = tfc.param_dtype(r.dtype)
        return tfc.tensor(r.gamma, stats), tfc.tensor(r.beta, stats)

    def _arguments(self, r: Request, training: bool) -> dict:
        stats = tfc.param_dtype(r.dtype)
        factor = 1.0 if r.momentum is None else float(r.momentum)
        kwargs = dict(epsilon=float(r.eps), data_format=self.data_format(r.x.ndim, r.axis), is_training=training,
                      exponential_avg_factor=factor)
        if r.running_mean is not None:
            kwargs.update(mean=tfc.tensor(r.running_mean, stats), variance=tfc.tensor(r.running_var, stats))
        elif training and factor != 1.0:
            kwargs["exponential_avg_factor"] = 1.0  # no running statistics to average into
        return kwargs

    @staticmethod
    def _reserve_spaces(x, scale, offset, kwargs):
        """(batch mean, biased batch variance): the CPU op's reserve_space_1/2, which the wrapper drops."""
        empty = tf.constant([], tf.float32)
        op = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=kwargs.get("mean", empty), variance=kwargs.get("variance", empty),
            epsilon=kwargs["epsilon"], exponential_avg_factor=kwargs["exponential_avg_factor"],
            data_format=kwargs["data_format"], is_training=kwargs["is_training"])
        return tfc.numpy(op.reserve_space_1), tfc.numpy(op.reserve_space_2)


BACKENDS = [
    NnBatchNormalization(compiled=False),
    NnBatchNormalization(compiled=True),
    FusedBatchNorm("last"),
    FusedBatchNorm("first"),
]
