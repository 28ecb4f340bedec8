"""Known discrepancies of the tensorflow adapters (see conformance/records.py for what an entry means)."""

from dataclasses import replace

import numpy as np

from ...spec import Mode, precision_for
from ...spec.conventions import TF_V1_LAYERS_NONFUSED
from ...spec.oracle import channels_first
from ..arrays import round_to
from ..records import KnownDiscrepancy

FLOAT16_MAX = 65504.0


def _per_channel(a, axis: int) -> np.ndarray:
    """(values per channel, channels) view of an x-shaped array."""
    return channels_first(np.asarray(a, np.float64), axis).T


def _float16_inverse_stds(i) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, rsqrt(var + eps)) per channel as tf.nn.batch_normalization forms them for float16 input
    (moments rounded to float16, eps converted to float16, rsqrt in float16): from the batch, and from the
    running statistics where given (the tutorial layer's inference branch normalizes with those)."""
    x = _per_channel(i.x, i.axis)
    pairs = [(x.mean(axis=0), x.var(axis=0))]
    if i.running is not None:
        pairs.append((np.asarray(i.running.mean, np.float64), np.asarray(i.running.var, np.float64)))
    eps = float(np.float16(i.eps))
    with np.errstate(divide="ignore", over="ignore"):
        return [(mean, 1.0 / np.sqrt(np.float16(var).astype(np.float64) + eps)) for mean, var in pairs]


# A channel is left unchecked when an intermediate comes within a factor 2 of float16's range: the rounding
# of the float16 moments decides the exact threshold, and the record claims nothing about those channels.
NEAR_FLOAT16_MAX = FLOAT16_MAX / 2


def folded_form_overflow_channels(i) -> np.ndarray:
    """Channels where x * (gamma * inv) or mean * (gamma * inv) can exceed float16's range."""
    gamma = 1.0 if i.gamma is None else np.abs(np.asarray(i.gamma, np.float64))
    largest = np.max(np.abs(_per_channel(i.x, i.axis)), axis=0)
    out = np.zeros(np.shape(i.x)[i.axis], bool)
    with np.errstate(invalid="ignore", over="ignore"):
        for mean, inv in _float16_inverse_stds(i):
            scale = inv * gamma
            out |= ~np.isfinite(scale) | (np.maximum(largest, np.abs(mean)) * scale > NEAR_FLOAT16_MAX)
    return out


def rsqrt_gradient_overflow_channels(i) -> np.ndarray:
    """Channels where the gradient of rsqrt, -0.5 * g * inv**3 (Eigen's scalar_rsqrt_gradient_op), can
    overflow float16: inv**3 exceeds 65504 once var + eps < 6.1e-4."""
    out = np.zeros(np.shape(i.x)[i.axis], bool)
    with np.errstate(over="ignore"):
        for _, inv in _float16_inverse_stds(i):
            out |= ~np.isfinite(inv) | (inv**3 > NEAR_FLOAT16_MAX)
    return out


def _float32_decay_momentum(momentum: float) -> float:
    """The old-weight momentum whose new-batch weight is float32(1 - momentum): the decay
    `tf.convert_to_tensor(1.0 - momentum)` (float32) cast to a float64 variable."""
    return 1.0 - float(np.float32(1.0 - momentum))


def _ema_decay_momentum(decay: float) -> float:
    """The same for ExponentialMovingAverage: decay is made a float32 tensor first, then 1 - decay in float32."""
    return 1.0 - float(np.float32(1.0 - np.float32(decay)))


def _float32_subnormal(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (v != 0) & (np.abs(v) < np.finfo(np.float32).tiny)


def _flush_float32_subnormals(v) -> np.ndarray:
    """What a flush-to-zero float32 update leaves of `v`: its float32 subnormals become zeros of their sign."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(_float32_subnormal(v), 0.0 * v, v)


def _inf_to_nan(a) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return np.where(np.isinf(a), np.nan, a)


V1_LAYERS = "tf.compat.v1.layers.batch_normalization["  # brackets are literal in entry patterns
TUTORIAL = "tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer]"
TRAIN_FORWARD = (Mode.TRAIN_FORWARD,)
RUNNING = ("running_mean", "running_var")


def _upstream_of_inv(i) -> np.ndarray:
    """Per channel, a bound on the sums the folded form's gradient forms, sum(dy * x) and sum(dy) * mean
    (times gamma on the way to inv; gamma = 0 does not spare the sum itself, inf * 0 is NaN): float16
    results of float32-accumulated sums."""
    gamma = 1.0 if i.gamma is None else np.maximum(np.abs(np.asarray(i.gamma, np.float64)), 1.0)
    x, dy = np.abs(_per_channel(i.x, i.axis)), np.abs(_per_channel(i.dy, i.axis))
    return np.maximum((dy * x).sum(axis=0), dy.sum(axis=0) * x.mean(axis=0)) * gamma


def gradient_overflow_channels(i) -> np.ndarray:
    """Channels where the float16 backward can overflow: the folded forward's products, the sums reaching
    inv (x ~ -1000 +- 0.5 over 10000 values: dx all NaN), or RsqrtGrad's -0.5 * g * inv**3 (Eigen's
    scalar_rsqrt_gradient_op) with that upstream g (std 0.1 over 10000 values: dx all -inf)."""
    out = folded_form_overflow_channels(i) | rsqrt_gradient_overflow_channels(i)
    if i.dy is not None:
        upstream = _upstream_of_inv(i)
        out |= upstream > NEAR_FLOAT16_MAX
        with np.errstate(over="ignore", invalid="ignore"):
            for _, inv in _float16_inverse_stds(i):
                out |= ~(0.5 * upstream * inv**3 <= NEAR_FLOAT16_MAX)
    return out



def _bias_factor_is_zero(shadow: str):
    """Whether the zero-debias factor 1 - (1 - w)**t is 0: w = float32(1 - float32(decay)) stored in the
    shadow's format, and 1 - w formed there, round to exactly 1 (t >= 1 then changes nothing)."""

    def when(i) -> bool:
        if i.momentum is None:
            return False
        w = float(round_to(np.array(float(np.float32(1.0 - np.float32(i.momentum)))), shadow))
        return float(round_to(np.array(1.0 - w), shadow)) == 1.0

    return when

ENTRIES: tuple[KnownDiscrepancy, ...] = (
    KnownDiscrepancy(
        id="tf-nn-float16-folded-form-overflow",
        backends="tf.nn.batch_normalization[*",  # [eager] and [tf.function]
        dtypes=("float16",),
        devices=("cpu",),
        modes=(Mode.TRAIN_FORWARD,),
        when=lambda i: bool(folded_form_overflow_channels(i).any()),
        unchecked=folded_form_overflow_channels,
        quantities=("y",),
        explanation=(
            "tf.nn.batch_normalization computes y = x * inv + (offset - mean * inv) with inv = rsqrt(var + eps) * "
            "scale in x's dtype. In float16 the two products overflow to +-inf whenever |x| * inv > 65504 (a "
            "channel of large values with small variance), and inf - inf gives NaN, although y itself is small. "
            "The record leaves the channels where an intermediate comes near float16's range unchecked and checks "
            "the others."
        ),
        evidence=(
            "tensorflow v2.21.0 tensorflow/python/ops/nn_impl.py:1491-1497 (batch_normalization: `inv = "
            "math_ops.rsqrt(variance + variance_epsilon)`; `return x * math_ops.cast(inv, x.dtype) + "
            "math_ops.cast(offset - mean * inv ...)`). Minimal: float16 x = [[-1000], [-1000]], eps 1e-5, no "
            "scale/offset: tf.nn.moments then tf.nn.batch_normalization give [nan, nan]; expected [0, 0] "
            "(inv = 316, x * inv = -3.2e5 overflows float16)."
        ),
    ),
    KnownDiscrepancy(
        id="tf-nn-float16-gradient",
        backends="tf.nn.batch_normalization[*",  # [eager] and [tf.function]
        dtypes=("float16",),
        devices=("cpu",),
        modes=(Mode.TRAIN_BACKWARD,),
        unchecked=gradient_overflow_channels,
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate=dtype, stats=dtype, flush_subnormals=True),
        quantities=("dx", "dgamma", "dbeta"),
        explanation=(
            "GradientTape through tf.nn.moments + tf.nn.batch_normalization differentiates the folded form "
            "x * inv + (offset - mean * inv) in float16, and (1) its batch reductions behave as float16 "
            "accumulations: with dy nearly parallel to x over 10000 values, sum(dy * x) stagnates and dx is "
            "off by 0.79 where the oracle gives -8e-4 (10x the bound of float16 arithmetic with float32 "
            "sums, within the bound with float16 sums); (2) RsqrtGrad forms -0.5 * g * inv**3 in half "
            "precision, which overflows once var + eps < ~6e-4, and eps below 3e-8 rounds to 0 in float16, so "
            "a constant channel has inv = inf; (3) the folded forward's products and the gradient's sums "
            "overflow for large |x| (x ~ -1000 +- 0.5 over 10000 values: dx all NaN). The record checks the "
            "gradients against float16 arithmetic with float16 sums, leaving unchecked the channels where "
            "inv**3, the folded products or sum(|dy * x|) come near float16's range."
        ),
        evidence=(
            "tensorflow v2.21.0: python/ops/math_grad.py _MulGrad (the gradient of x * inv with respect to "
            "the broadcast inv is reduce_sum(grad * x) in x's dtype) and _RsqrtGrad -> Eigen "
            "scalar_rsqrt_gradient_op (-0.5 * grad * out**3 in T = half). Measured: float16 x = [[0.0012569], "
            "[-0.0013208]], eps 1e-5, dy = [[0.12573], [-0.13210]]: dx = [-inf, inf], oracle [32.37, -32.37]; "
            "x ~ N(0, 1) of shape (10000, 2) with dy = x rounded to float16: max |dx error| 0.83."
        ),
    ),
    KnownDiscrepancy(
        id="tf-v1-layers-update-ops-forgotten",
        backends=V1_LAYERS + "*update ops forgotten]",
        modes=TRAIN_FORWARD,
        quantities=RUNNING,
        # old-weight momentum 1: w = 0, running stays as it was; x of zeros, so that a NaN or Inf batch statistic
        # does not make the zero-weight update 0 * NaN = NaN (the running statistics are never touched)
        adjust=lambda i: replace(i, momentum=1.0, x=np.zeros_like(i.x)),
        explanation=(
            "The classic TF1 pitfall: tf.compat.v1.layers.batch_normalization only adds its moving-average "
            "assignments to the UPDATE_OPS collection; a train op not built under "
            "tf.control_dependencies(tf.compat.v1.get_collection(UPDATE_OPS)) never runs them, so the moving "
            "mean and variance keep their initial values forever and inference normalizes with (0, 1)."
        ),
        evidence=(
            "tf_keras v2.21.0 tf_keras/src/legacy_tf_layers/base.py:620-624 (Layer.__call__: `if not "
            "tf.executing_eagerly(): _add_elements_to_collection(self.updates, "
            "tf.compat.v1.GraphKeys.UPDATE_OPS)`); tf_keras/src/layers/normalization/batch_normalization.py "
            "_fused_batch_norm: `self.add_update(mean_update)`. Minimal: fused float32 x of shape (4,3,3,2), "
            "momentum 0.9, moving (0.5,-0.5)/(2,3): session.run(y) leaves them (0.5,-0.5)/(2,3); with the update "
            "ops run they become (0.4511,-0.4333)/(1.8952,2.7838)."
        ),
    ),
    KnownDiscrepancy(
        id="tf-v1-layers-fused-eval-update-turns-inf-into-nan",
        backends=V1_LAYERS + "fused]",
        dtypes=("float32", "float16", "bfloat16"),  # float64 runs the non-fused path, which leaves them alone
        modes=(Mode.EVAL_FORWARD,),
        when=lambda i: np.ndim(i.x) in (4, 5) and i.running is not None
        and bool(np.isinf(i.running.mean).any() or np.isinf(i.running.var).any()),
        quantities=RUNNING,
        adjust=lambda i: replace(i, running=replace(i.running, mean=_inf_to_nan(i.running.mean), var=_inf_to_nan(i.running.var))),
        explanation=(
            "With `training` a placeholder fed False, the fused layer's update ops still assign "
            "moving <- moving - (moving - mean) * (1 - momentum) with momentum switched to 1.0 and mean the "
            "inference op's output (the moving statistic itself): a zero update for finite statistics, but "
            "(inf - inf) * 0 = NaN, so an eval step that runs the update ops (attached to the step, the "
            "documented pattern) turns an infinite moving mean or variance into NaN. The non-fused path takes "
            "smart_cond's false branch and leaves them alone."
        ),
        evidence=(
            "tf_keras v2.21.0 tf_keras/src/layers/normalization/batch_normalization.py:1001-1003 "
            "(_fused_batch_norm: `momentum = control_flow_util.smart_cond(training, lambda: self.momentum, "
            "lambda: 1.0)`), :978-988 (_fused_batch_norm_inference returns mean=self.moving_mean), :867-870 "
            "(_assign_moving_average: `decay = tf.convert_to_tensor(1.0 - momentum)`; `update_delta = (variable "
            "- tf.cast(value, variable.dtype)) * decay`). Measured: float32 x of shape (2, 3, 2, 2), moving mean "
            "(inf, 0, 1), variance (1, inf, 2), training fed False with the update ops run: moving mean "
            "(nan, 0, 1), variance (1, nan, 2); the non-fused layer returns them unchanged."
        ),
    ),
    KnownDiscrepancy(
        id="tf-v1-layers-fused-eval-update-flushes-subnormal-running-stats",
        backends=V1_LAYERS + "fused]",
        dtypes=("float32", "float16", "bfloat16"),  # float64 runs the non-fused path, which leaves them alone
        modes=(Mode.EVAL_FORWARD,),
        when=lambda i: np.ndim(i.x) in (4, 5) and i.running is not None
        and bool(_float32_subnormal(i.running.mean).any() or _float32_subnormal(i.running.var).any()),
        quantities=RUNNING,
        adjust=lambda i: replace(i, running=replace(i.running, mean=_flush_float32_subnormals(i.running.mean),
                                                    var=_flush_float32_subnormals(i.running.var))),
        explanation=(
            "The same eval-time update as tf-v1-layers-fused-eval-update-turns-inf-into-nan, "
            "moving <- moving - (moving - mean) * 0, runs in float32 on a CPU runtime that flushes subnormals to "
            "zero (declared for every TF kernel): a subnormal moving mean or variance (|v| < 1.18e-38) comes back "
            "as a signed zero, so an eval step changes the running statistics. Found by the eval-state rule of "
            "issue 15 in the committed CPU report's float16 and bfloat16 cells."
        ),
        evidence=(
            "tf_keras v2.21.0 tf_keras/src/layers/normalization/batch_normalization.py:1001-1003 and :867-870 (as "
            "in the inf record). Observed (bnconf report --examples 8, seed 0): float16 eval, running_mean "
            "-1.401298464324817e-45 in channel 3 came back -0.0; bfloat16 eval, -1.8301378333621408e-40 came back -0.0."
        ),
    ),
    KnownDiscrepancy(
        id="tf-v1-layers-fused-float64-falls-back-to-non-fused",
        backends=V1_LAYERS + "fused]",
        dtypes=("float64",),
        modes=TRAIN_FORWARD,
        quantities=RUNNING,
        convention=TF_V1_LAYERS_NONFUSED,
        adjust=lambda i: replace(i, momentum=_float32_decay_momentum(i.momentum)),
        explanation=(
            "fused=True with float64 input does not raise: the V1 layer quietly runs the non-fused path "
            "(FusedBatchNormV3 has no float64 kernel), so the moving variance averages the biased batch variance "
            "instead of the fused kernel's Bessel-corrected one, and the decay is the float32 "
            "tf.convert_to_tensor(1.0 - momentum) cast to float64 (see tf-v1-layers-float64-float32-decay)."
        ),
        evidence=(
            "tf_keras v2.21.0 tf_keras/src/layers/normalization/batch_normalization.py build(): V1 branch "
            "`self.fused = rank in (4, 5) and self._fused_can_be_used()`, and _raise_if_fused_cannot_be_used: "
            "'only supported when the compute dtype is float16, bfloat16, or float32'. Observed: float64 (4,5,5,3) "
            "graph has no FusedBatchNormV3 op, layer.fused is False."
        ),
    ),
    KnownDiscrepancy(
        id="tf-v1-layers-float64-float32-decay",
        backends=V1_LAYERS + "non-fused]",
        dtypes=("float64",),
        modes=TRAIN_FORWARD,
        quantities=RUNNING,
        adjust=lambda i: replace(i, momentum=_float32_decay_momentum(i.momentum)),
        explanation=(
            "The non-fused layer forms the decay as tf.convert_to_tensor(1.0 - momentum): a Python float "
            "becomes a float32 tensor, cast afterwards to the float64 variable, so a float64 moving average "
            "weighs the batch by float32(1 - momentum) (relative error up to 6e-8, far above float64 rounding)."
        ),
        evidence=(
            "tf_keras v2.21.0 tf_keras/src/layers/normalization/batch_normalization.py _assign_moving_average: "
            "`decay = tf.convert_to_tensor(1.0 - momentum, name=\"decay\")`; `if decay.dtype != "
            "variable.dtype.base_dtype: decay = tf.cast(...)`. Minimal: float64 x = [[0.12573022], "
            "[-0.13210486]], momentum 0.1, moving (0, 1): running_mean -0.0028685889130672096, "
            "max error/bound 7e5 against w = 0.9 exactly."
        ),
    ),
    KnownDiscrepancy(
        id="tf-tutorial-train-eps-hard-coded",
        backends=TUTORIAL + "*train eps hard-coded 1e-5]",
        modes=(Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD),
        quantities=("y", "dx", "dgamma", "running_mean", "running_var"),
        adjust=lambda i: replace(i, eps=1e-5, momentum=_ema_decay_momentum(i.momentum)),
        explanation=(
            "A frequent bug in hand-written TF1 batch-norm layers: the training branch calls "
            "tf.nn.batch_normalization(..., 1e-5) with a literal while the inference branch passes the layer's "
            "epsilon, so training and inference normalize with different eps: train modes follow eps = 1e-5, "
            "eval modes the declared eps (they conform). The recorded model also carries the EMA's float32 "
            "decay (see tf-tutorial-ema-float32-decay)."
        ),
        evidence=(
            "adapters/tensorflow_layers.py TutorialEmaBatchNormalization(train_eps_bug=True): train_branch "
            "normalizes with TUTORIAL_TRAIN_EPS = 1e-5, inference_branch with the eps placeholder. Minimal: "
            "float32 x of shape (4,3,3,2), eps 1e-3, gamma (1.5, 2), beta (0.1, 0.2): train y[0] = 0.27822 vs "
            "0.27812 with eps 1e-3."
        ),
    ),
    # before tf-tutorial-ema-float32-decay, which also covers float64 tutorial cases: the first match wins
    *(KnownDiscrepancy(
        id="tf-tutorial-zero-debias-decay-one-nan" + ("" if shadow == "wide" else f"-{shadow}"),
        backends=TUTORIAL + "[zero_debias]*",
        dtypes=("float64", "float32") if shadow == "wide" else (shadow,),
        modes=TRAIN_FORWARD,
        when=_bias_factor_is_zero("float32" if shadow == "wide" else shadow),
        unchecked=lambda i: np.ones(np.shape(i.x)[i.axis], bool),  # every channel: nothing finite to check
        quantities=RUNNING,
        explanation=(
            "With decay 1, or a decay whose 1 - decay rounds away (w = float32(1 - float32(decay)) is 0, or the "
            "shadow's format rounds 1 - w to 1: a bfloat16 shadow at decay 1 - 2**-9), the zero-debiased shadow is "
            "biased / (1 - (1 - w)**t) = biased / 0: NaN or inf, where the limit (the oracle's zero-debias weight "
            "1/t at w -> 0) is finite. The record checks nothing finite there: it identifies the case."
        ),
        evidence=(
            "tensorflow v2.21.0 tensorflow/python/training/moving_averages.py assign_moving_average: "
            "`decay = ops.convert_to_tensor(1.0 - decay)` then _zero_debias.update_fn: `bias_factor = 1 - "
            "math_ops.pow(1.0 - decay, update_local_step)`; `state_ops.assign(v, update_biased / bias_factor)`. "
            "Report: float64 x of shape (4, 3, 1), decay 1.0: running_mean nan, oracle 53.62. Thorough profile: "
            "bfloat16 x of shape (2, 2), decay 0.998046875 = 1 - 2**-9 from count 0: running_mean inf, oracle 0.383."
        ),
    ) for shadow in ("wide", "bfloat16")),
    KnownDiscrepancy(
        id="tf-tutorial-ema-float32-decay",
        backends=TUTORIAL + "*",
        dtypes=("float64",),
        modes=TRAIN_FORWARD,
        quantities=RUNNING,
        adjust=lambda i: replace(i, momentum=_ema_decay_momentum(i.momentum)),
        explanation=(
            "ExponentialMovingAverage turns decay into a float32 tensor and forms 1 - decay in float32 before "
            "casting it to the shadow's dtype: float64 shadows move by w = float32(1 - float32(decay)), not "
            "1 - decay (zero-debiased ones use the same w in their bias factor)."
        ),
        evidence=(
            "tensorflow v2.21.0 tensorflow/python/training/moving_averages.py ExponentialMovingAverage.apply: "
            "`decay = ops.convert_to_tensor(self._decay, dtype=dtypes.float32, name=\"decay\")`; "
            "assign_moving_average: `decay = ops.convert_to_tensor(1.0 - decay, name=\"decay\")`, then "
            "`math_ops.cast(decay, variable.dtype.base_dtype)`."
        ),
    ),
)


def nonfinite_channels(i) -> np.ndarray:
    """Per channel: x holds a NaN or an infinity there."""
    return ~np.isfinite(channels_first(np.asarray(i.x, np.float64), i.axis)).all(axis=1)


def _nan_dy_in_nonfinite_channels(i):
    """The inputs with dy NaN throughout every channel whose x holds a NaN or an infinity: eval's dx = dy * gamma * s
    is then NaN exactly there, as these layers return it."""
    shape = [1] * np.ndim(i.x)
    shape[i.axis % np.ndim(i.x)] = -1
    return replace(i, dy=np.where(nonfinite_channels(i).reshape(shape), np.nan, i.dy))


def _eval_gradient_through_batch_moments(edge_id: str, backends: str, dtypes: tuple[str, ...] = ()) -> KnownDiscrepancy:
    """The main battery's record of an edge behaviour (conformance/known/edge.py `edge_id`): in eval, a NaN or Inf
    in a channel of x makes dx of that whole channel NaN (the batch moments' gradient 0 * (x - mean))."""
    from .edge import ENTRIES as EDGE_ENTRIES  # noqa: PLC0415 - data module, imported where the records are made

    edge = next(r for r in EDGE_ENTRIES if r.id == edge_id)
    return KnownDiscrepancy(
        id=edge_id.removeprefix("edge-"),
        backends=backends,
        dtypes=dtypes,
        modes=(Mode.EVAL_BACKWARD,),
        when=lambda i: bool(nonfinite_channels(i).any()),
        quantities=("dx",),
        adjust=_nan_dy_in_nonfinite_channels,
        explanation=edge.explanation + " Recorded as dx NaN throughout each channel of x holding a NaN or an "
        "infinity, the other channels as declared (the edge record " + edge.id + ").",
        evidence=edge.evidence + " The main battery's non-finite draws (issue 16) show it in every dtype run.",
    )


ENTRIES += (
    _eval_gradient_through_batch_moments("edge-tf-v1-layers-non-fused-eval-gradient-through-batch-moments",
                                         V1_LAYERS + "non-fused]"),
    # fused=True with float64 runs the non-fused layer (tf-v1-layers-fused-float64-falls-back-to-non-fused)
    _eval_gradient_through_batch_moments("edge-tf-v1-layers-fused-float64-eval-gradient-through-batch-moments",
                                         V1_LAYERS + "fused*", ("float64",)),
    _eval_gradient_through_batch_moments("edge-tf-tutorial-eval-gradient-through-batch-moments", TUTORIAL + "*"),
)
