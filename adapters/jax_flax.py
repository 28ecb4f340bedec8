"""flax.linen.BatchNorm and flax.nnx.BatchNorm behind the adapter protocol.

Both are built with `dtype` = the input's dtype (the layer's output format) and `param_dtype` float32
(float64 for float64 inputs), the mixed-precision set-up: half inputs give half outputs, and the batch
statistics are computed in float32 (`_compute_stats` promotes its dtype to at least float32). Running
statistics are held in float32 (float64 for float64 inputs). The batch variance is the layer's
`use_fast_variance` choice: max(0, E[x^2] - E[x]^2) by default, E[(x - E[x])^2] with False.
Training: linen `apply(..., mutable=["batch_stats"], use_running_average=False)`, NNX `model.train()`;
eval: `use_running_average=True`, NNX `model.eval()`.
"""

import flax
import flax.linen as nn
import numpy as np
from flax import nnx

from ..spec import Precision, VarianceAlgorithm
from ..spec.conventions import FLAX_LINEN_BATCHNORM, FLAX_NNX_BATCHNORM
from .jax_common import JAX_DTYPES, JaxBackend, Step, jax_precision, wide


class _FlaxBatchNorm(JaxBackend):
    """What linen and NNX share: names, the variance choice, float32 statistics."""

    channel_axes = (-1, 1)
    packages = ("flax",)

    def __init__(self, fast_variance: bool = True):
        self.fast_variance = fast_variance
        self.name = self.convention.name + ("" if fast_variance else "[use_fast_variance=False]")
        self.ranks = self.convention.ranks

    def library_versions(self) -> dict[str, str]:
        return {"flax": flax.__version__}

    def _variance(self) -> VarianceAlgorithm:
        return VarianceAlgorithm.ONE_PASS if self.fast_variance else VarianceAlgorithm.TWO_PASS

    def state_from(self, step: Step, r) -> dict:
        """batch_stats {mean, var} in the statistics format; the layer's initial (0, 1) when untracked."""
        c = r.x.shape[step.axis]
        dtype = JAX_DTYPES[wide(r.dtype)]  # NumPy arrays: `run` puts them on the device, nothing is compiled
        if r.running_mean is None:
            return {"mean": np.zeros(c, dtype), "var": np.ones(c, dtype)}
        return {"mean": np.asarray(r.running_mean, dtype), "var": np.asarray(r.running_var, dtype)}


class LinenBatchNorm(_FlaxBatchNorm):
    """flax.linen.BatchNorm(use_running_average, axis, momentum, epsilon, dtype, param_dtype, use_bias,
    use_scale, use_fast_variance): y = (x - mean) * (rsqrt(var + eps) * scale) + bias; running statistics
    <- momentum * running + (1 - momentum) * batch (biased variance)."""

    convention = FLAX_LINEN_BATCHNORM

    def precision(self, dtype: str, device: str) -> Precision:
        """Statistics and normalization in float32 (float64 for float64), output in the input's format."""
        return jax_precision(dtype, device, variance=self._variance())

    def forward(self, step: Step, x, gamma, beta, state, eps, momentum):
        layer = nn.BatchNorm(
            use_running_average=not step.training, axis=step.axis, momentum=momentum, epsilon=eps,
            dtype=x.dtype, param_dtype=JAX_DTYPES[wide(step.dtype)], use_bias=step.affine, use_scale=step.affine,
            use_fast_variance=self.fast_variance,
        )
        variables = {"batch_stats": state}
        if step.affine:
            variables["params"] = {"scale": gamma, "bias": beta}
        # batch_stats after the call, eval included (use_running_average=True must leave them alone)
        y, updated = layer.apply(variables, x, mutable=["batch_stats"])
        stats = updated["batch_stats"]
        return y, {"running_mean": stats["mean"], "running_var": stats["var"]}


class NnxBatchNorm(_FlaxBatchNorm):
    """flax.nnx.BatchNorm(num_features, axis, momentum, epsilon, dtype, param_dtype, use_bias, use_scale,
    use_fast_variance), switched with model.train() / model.eval().

    Unlike linen, NNX first promotes x, the running statistics, scale and bias to `dtype`
    (`self.promote_dtype((x, self.mean, self.var, scale, bias), dtype=self.dtype)`): with a half `dtype` the
    normalization runs in half precision with half-rounded parameters; only the batch statistics and
    the running update stay in float32.
    """

    convention = FLAX_NNX_BATCHNORM

    def precision(self, dtype: str, device: str) -> Precision:
        """Batch statistics summed in float32 and running statistics kept in float32 (float64 for float64);
        the normalization in `dtype`, the layer's documented promotion."""
        if dtype in ("float16", "bfloat16"):
            return jax_precision(dtype, device, compute=dtype, accumulate="float32", stats="float32", variance=self._variance())
        return jax_precision(dtype, device, variance=self._variance())

    def forward(self, step: Step, x, gamma, beta, state, eps, momentum):
        layer = nnx.BatchNorm(
            x.shape[step.axis], axis=step.axis, momentum=momentum, epsilon=eps, dtype=x.dtype,
            param_dtype=JAX_DTYPES[wide(step.dtype)], use_bias=step.affine, use_scale=step.affine,
            use_fast_variance=self.fast_variance, rngs=nnx.Rngs(0),
        )
        # set_value replaces the arrays (dtype included); `v[...] = a` would cast into the float32 variables
        layer.mean.set_value(state["mean"]), layer.var.set_value(state["var"])
        if step.affine:
            layer.scale.set_value(gamma), layer.bias.set_value(beta)
        if step.training:
            layer.train()
        else:
            layer.eval()
        y = layer(x)
        return y, {"running_mean": layer.mean[...], "running_var": layer.var[...]}  # after the call, eval too


BACKENDS = [LinenBatchNorm(), LinenBatchNorm(fast_variance=False), NnxBatchNorm(), NnxBatchNorm(fast_variance=False)]
