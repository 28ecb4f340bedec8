"""haiku.BatchNorm behind the adapter protocol, through hk.transform_with_state.

hk.BatchNorm(create_scale, create_offset, decay_rate, eps, data_format) computes everything in the
input's dtype: mean = E[x], var = E[x^2] - E[x]^2 (one pass, not clamped at 0), scale and offset
created in x.dtype, y = (x - mean) * (scale * rsqrt(var + eps)) + offset. Its moving averages are
hk.ExponentialMovingAverage(decay_rate) states {counter, hidden, average}: hidden <- hidden * d + v * (1 - d),
average = hidden / (1 - d**counter) (zero-debiased); eval normalizes with `average`.
"""

import haiku as hk
import jax.numpy as jnp
import numpy as np

from ..spec import Precision, VarianceAlgorithm
from ..spec.conventions import HAIKU_BATCHNORM
from .jax_common import JAX_DTYPES, JaxBackend, Step, jax_precision

_MODULE = "batch_norm"
_EMAS = {"mean": f"{_MODULE}/~/mean_ema", "var": f"{_MODULE}/~/var_ema"}


def _stat_shape(step: Step, ndim: int, channels: int) -> tuple[int, ...]:
    """The keepdims shape of haiku's statistics and parameters: 1 everywhere but the channel axis."""
    return tuple(channels if i == step.axis else 1 for i in range(ndim))


class HaikuBatchNorm(JaxBackend):
    """hk.BatchNorm, channels last or first (data_format), affine via create_scale/create_offset."""

    convention = HAIKU_BATCHNORM
    name = HAIKU_BATCHNORM.name
    channel_axes = (-1, 1)
    packages = ("haiku",)
    ranks = HAIKU_BATCHNORM.ranks

    def library_versions(self) -> dict[str, str]:
        return {"dm-haiku": hk.__version__}

    def parameter_dtype(self, dtype: str) -> str:
        return dtype  # hk.get_parameter(..., inputs.dtype)

    def precision(self, dtype: str, device: str) -> Precision:
        """All arithmetic and state in the input's dtype, one-pass variance; jnp.mean sums half inputs in float32."""
        return jax_precision(dtype, device, compute=dtype, accumulate="float32" if dtype in ("float16", "bfloat16") else None,
                             stats=dtype, variance=VarianceAlgorithm.ONE_PASS)

    def state_from(self, step: Step, r) -> dict:
        """Each EMA's state for the request: average = the running statistic, counter = batches seen; hidden
        (which haiku forms as average * (1 - d**counter)) is set in `forward`, where d is known."""
        shape = _stat_shape(step, r.x.ndim, r.x.shape[step.axis])
        dtype = JAX_DTYPES[r.dtype]  # NumPy arrays: `run` puts them on the device, nothing is compiled
        values = {"mean": r.running_mean, "var": r.running_var}
        if r.running_mean is None:  # untracked: the layer's own initial state, never read back
            values = {"mean": np.zeros(shape[step.axis]), "var": np.ones(shape[step.axis])}
        return {
            ema: {"counter": np.asarray(r.batches_seen, np.int32), "average": np.asarray(values[k], dtype).reshape(shape)}
            for k, ema in _EMAS.items()
        }

    def forward(self, step: Step, x, gamma, beta, state, eps, momentum):
        data_format = "channels_last" if step.axis == x.ndim - 1 else "channels_first"

        def layer(x):
            bn = hk.BatchNorm(step.affine, step.affine, decay_rate=momentum, eps=eps, data_format=data_format)
            return bn(x, is_training=step.training)

        shape = _stat_shape(step, x.ndim, x.shape[step.axis])
        params = {_MODULE: {"scale": gamma.reshape(shape), "offset": beta.reshape(shape)}} if step.affine else {}
        decay = jnp.asarray(momentum, x.dtype)  # as ExponentialMovingAverage converts it
        one = jnp.ones([], x.dtype)
        hk_state = {
            ema: {**s, "hidden": s["average"] * (one - jnp.power(decay, s["counter"]))} for ema, s in state.items()
        }
        y, new_state = hk.transform_with_state(layer).apply(params, hk_state, None, x)
        mean, var = (new_state[_EMAS[k]] for k in ("mean", "var"))  # after the call, eval included
        return y, {"running_mean": mean["average"].reshape(-1), "running_var": var["average"].reshape(-1),
                   "batches_seen": mean["counter"]}


BACKENDS = [HaikuBatchNorm()]
