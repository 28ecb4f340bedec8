"""equinox.nn.BatchNorm(mode="batch") behind the adapter protocol.

The layer sees one example (C, *spatial) and is vmapped over the batch with a matching axis_name, so
the channel axis of the batch is 1. Statistics are formed in the input's dtype: mean by jnp.mean and
lax.pmean, var = max(0, pmean(mean((x - mean)^2))) (two-pass, clamped); y = (x - mean) / sqrt(var + eps),
then * weight + bias. The adapter builds the layer with dtype = the input's dtype (its default is float32,
which would turn a half input's affine output into float32), so weight, bias and state are in the
input's format and all arithmetic is too. The state is
a batch counter t and zero-debiasing "hidden" averages: hidden <- hidden * momentum + batch * (1 - momentum);
inference normalizes with hidden / (1 - momentum**t), or hidden itself while t == 0
(equinox/nn/_batch_norm.py, BatchNorm.__call__). The adapter gives the state for running statistics R
after t batches as (t, R * (1 - momentum**t)), and (0, R) for t == 0, the layer's reading of its state.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..spec import Precision
from ..spec.conventions import EQUINOX_BATCHNORM
from .jax_common import JAX_DTYPES, JaxBackend, Step, jax_precision


def _layer(step: Step, channels: int, eps, momentum):
    """eqx.nn.BatchNorm and its initial state; eps and momentum are its static fields, traced here (one
    compilation for every value), which equinox warns about: silenced for this call only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A JAX array is being set as static")
        return eqx.nn.make_with_state(eqx.nn.BatchNorm)(
            channels, "batch", eps=eps, channelwise_affine=step.affine, momentum=momentum,
            inference=not step.training, dtype=JAX_DTYPES[step.dtype], mode="batch",
        )


def _debias_scale(counter, momentum):
    """What equinox's inference divides the hidden averages by: 1 while the counter is 0, else 1 - momentum**t."""
    return jnp.where(counter == 0, 1, 1 - momentum**counter)


class EquinoxBatchNorm(JaxBackend):
    """equinox.nn.BatchNorm(input_size, axis_name, eps, channelwise_affine, momentum, inference, mode="batch")."""

    convention = EQUINOX_BATCHNORM
    name = EQUINOX_BATCHNORM.name
    channel_axes = (1,)
    packages = ("equinox",)
    ranks = EQUINOX_BATCHNORM.ranks

    def library_versions(self) -> dict[str, str]:
        return {"equinox": eqx.__version__}

    def precision(self, dtype: str, device: str) -> Precision:
        """Everything in the input's dtype, sums included: jnp.mean sums one example in float32, but
        lax.pmean over the vmapped batch axis, and the gradient sums for weight and bias, add in `dtype`."""
        return jax_precision(dtype, device, compute=dtype, stats=dtype)

    def parameter_dtype(self, dtype: str) -> str:
        return dtype

    def state_from(self, step: Step, r) -> dict:
        c = r.x.shape[step.axis]
        dtype = JAX_DTYPES[r.dtype]  # NumPy arrays: `run` puts them on the device, nothing is compiled
        if r.running_mean is None:  # untracked: the layer's own initial state
            return {"counter": 0, "mean": np.zeros(c, dtype), "var": np.ones(c, dtype)}
        return {"counter": int(r.batches_seen),
                "mean": np.asarray(r.running_mean, dtype), "var": np.asarray(r.running_var, dtype)}

    def forward(self, step: Step, x, gamma, beta, state, eps, momentum):
        layer, layer_state = _layer(step, x.shape[1], eps, momentum)
        if step.affine:
            layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (gamma, beta))
        counter = state["counter"]  # a Python int in `state_from`: weakly typed, like the layer's jnp.array(0)
        scale = _debias_scale(counter, momentum)
        layer_state = layer_state.set(layer.batch_counter, counter)
        layer_state = layer_state.set(layer.batch_state_index, (state["mean"] * scale, state["var"] * scale))
        given = (counter, *layer_state.get(layer.batch_state_index))
        y, layer_state = jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, layer_state)
        counter = layer_state.get(layer.batch_counter)
        hidden_mean, hidden_var = layer_state.get(layer.batch_state_index)
        scale = _debias_scale(counter, momentum)
        running = {"running_mean": hidden_mean / scale, "running_var": hidden_var / scale, "batches_seen": counter}
        if not step.training:
            # the state after an eval call; where it is bit for bit the state set from the request, the request's
            # statistics themselves (decoding hidden / scale again could round differently from what was encoded)
            kept = lambda old, new: (old == new) & (counter == given[0])  # noqa: E731
            running["running_mean"] = jnp.where(kept(given[1], hidden_mean), state["mean"], running["running_mean"])
            running["running_var"] = jnp.where(kept(given[2], hidden_var), state["var"], running["running_var"])
        return y, running


BACKENDS = [EquinoxBatchNorm()]
