"""Every framework's batch-norm convention, written down as data.

A `Convention` says how an API turns (batch statistics, momentum, eps) into outputs and running
statistics. The oracle reads these fields; it never branches on a framework's name. Each record names
the source it was read from, so that a reader can check it against the installed version.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum


class MomentumStyle(Enum):
    """Which term the momentum parameter weights in the moving-average update."""

    NEW_WEIGHT = "new_weight"  # running = (1 - m) * running + m * batch      (PyTorch, cuDNN, TF fused)
    OLD_WEIGHT = "old_weight"  # running = m * running + (1 - m) * batch      (TF/Keras/Flax/ONNX/Haiku)


class Variance(Enum):
    """Which estimator of the per-channel variance is meant."""

    BIASED = "biased"  # sum((x - mean)**2) / n       (population variance)
    UNBIASED = "unbiased"  # sum((x - mean)**2) / (n - 1)  (Bessel-corrected)


class EpsPlacement(Enum):
    """Where eps enters the inverse standard deviation."""

    INSIDE_SQRT = "inside_sqrt"  # 1 / sqrt(var + eps)   (every framework)
    OUTSIDE_SQRT = "outside_sqrt"  # 1 / (sqrt(var) + eps)  (a known bug, e.g. keras PR #10427)


@dataclass(frozen=True)
class Convention:
    """The semantics one batch-norm API implements.

    Training forward normalizes with the `normalize_with` variance of the current batch;
    the running statistics are updated with a weight w on the new batch statistic:
        running <- (1 - w) * running + w * batch,
    where w = momentum (NEW_WEIGHT) or 1 - momentum (OLD_WEIGHT); w = 1/t for the cumulative average
    (`cumulative_average`, momentum None, t = batches seen); zero-debiasing turns a constant w into
    w / (1 - (1 - w)**t), the weight that `tf.train.ExponentialMovingAverage(zero_debias=True)` and
    Haiku's moving average effectively give the t-th batch. The running variance averages the
    `running_var` estimator of the batch variance.
    """

    name: str
    api: str
    source: str  # repository, file and function the record was read from
    source_url: str
    default_eps: float | None  # None: the API has no default, the caller must pass one
    default_momentum: float | None  # in this API's own convention; None: none or required
    momentum_style: MomentumStyle
    channel_axis: int
    ranks: tuple[int, ...] = (2, 3, 4, 5)
    tracks_running_stats: bool = True
    running_var: Variance = Variance.BIASED
    normalize_with: Variance = Variance.BIASED
    eps_placement: EpsPlacement = EpsPlacement.INSIDE_SQRT
    eps_min: float = 0.0  # eps is clamped to at least this value before use
    bessel_divisor_min: int = 0  # the Bessel correction divides by max(n - 1, this): 1 keeps n = 1 finite
    cumulative_average: bool = False  # momentum None selects the cumulative moving average
    zero_debias: bool = False
    # eval mode without running statistics normalizes with the batch's (PyTorch modules built with
    # track_running_stats=False); False: eval needs running statistics
    untracked_eval_uses_batch_stats: bool = False
    notes: str = ""


_TORCH_BASE = Convention(
    name="torch.nn.BatchNorm",
    api="torch.nn.BatchNorm1d/2d/3d",
    source=(
        "pytorch/pytorch v2.13.0: torch/nn/modules/batchnorm.py::_BatchNorm.forward; "
        "aten/src/ATen/native/Normalization.cpp::batch_norm_cpu_update_stats_template"
    ),
    source_url="https://github.com/pytorch/pytorch/blob/v2.13.0/torch/nn/modules/batchnorm.py",
    default_eps=1e-5,
    default_momentum=0.1,
    momentum_style=MomentumStyle.NEW_WEIGHT,
    channel_axis=1,
    running_var=Variance.UNBIASED,
    cumulative_average=True,
    untracked_eval_uses_batch_stats=True,
    notes=(
        "running_var averages the Bessel-corrected batch variance while the output is normalized "
        "with the biased one (documented in the BatchNorm1d docstring); momentum=None gives the "
        "cumulative average with factor 1/num_batches_tracked; a module built with "
        "track_running_stats=False normalizes with batch statistics in eval mode too "
        "(_BatchNorm.forward: bn_training = self.running_mean is None and self.running_var is None)."
    ),
)

TORCH_BATCHNORM1D = replace(
    _TORCH_BASE, name="torch.nn.BatchNorm1d", api="torch.nn.BatchNorm1d", ranks=(2, 3)
)
TORCH_BATCHNORM2D = replace(
    _TORCH_BASE, name="torch.nn.BatchNorm2d", api="torch.nn.BatchNorm2d", ranks=(4,)
)
TORCH_BATCHNORM3D = replace(
    _TORCH_BASE, name="torch.nn.BatchNorm3d", api="torch.nn.BatchNorm3d", ranks=(5,)
)
TORCH_FUNCTIONAL = replace(
    _TORCH_BASE,
    name="torch.nn.functional.batch_norm",
    api="torch.nn.functional.batch_norm",
    source=(
        "pytorch/pytorch v2.13.0: torch/nn/functional.py::batch_norm; "
        "aten/src/ATen/native/Normalization.cpp::batch_norm_cpu_update_stats_template"
    ),
    source_url="https://github.com/pytorch/pytorch/blob/v2.13.0/torch/nn/functional.py",
    cumulative_average=False,
    untracked_eval_uses_batch_stats=False,
    notes=(
        "Takes a float momentum only (the modules compute the cumulative factor themselves); "
        "training=False without running statistics raises 'running_mean must be defined in evaluation mode'."
    ),
)

TF_NN_BATCH_NORMALIZATION = Convention(
    name="tf.nn.batch_normalization",
    api="tf.nn.moments + tf.nn.batch_normalization",
    source=(
        "tensorflow/tensorflow v2.21.0: tensorflow/python/ops/nn_impl.py::moments, "
        "::batch_normalization"
    ),
    source_url="https://github.com/tensorflow/tensorflow/blob/v2.21.0/tensorflow/python/ops/nn_impl.py",
    default_eps=None,
    default_momentum=None,
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=-1,
    tracks_running_stats=False,
    notes=(
        "No running statistics: the caller keeps them. moments returns the biased variance; "
        "variance_epsilon has no default; output is x*inv + (offset - mean*inv), inv = rsqrt(var+eps)*scale."
    ),
)

TF_FUSED_BATCH_NORM = Convention(
    name="tf.compat.v1.nn.fused_batch_norm",
    api="tf.compat.v1.nn.fused_batch_norm (no tf.nn.fused_batch_norm in TF 2)",
    source=(
        "tensorflow/tensorflow v2.21.0: tensorflow/python/ops/nn_impl.py::fused_batch_norm; "
        "tensorflow/core/kernels/fused_batch_norm_op.cc::FusedBatchNorm<CPUDevice> (Eigen) and "
        "tensorflow/core/kernels/mkl/mkl_fused_batch_norm_op.cc (oneDNN, the default on x86 CPUs)"
    ),
    source_url=(
        "https://github.com/tensorflow/tensorflow/blob/v2.21.0/"
        "tensorflow/core/kernels/fused_batch_norm_op.cc"
    ),
    default_eps=1e-3,
    default_momentum=1.0,  # exponential_avg_factor: weight on the new batch
    momentum_style=MomentumStyle.NEW_WEIGHT,
    channel_axis=-1,  # data_format="NHWC"
    ranks=(4, 5),
    running_var=Variance.UNBIASED,
    bessel_divisor_min=1,  # rest_size_minus_one = max(rest_size - 1, 1): one value per channel gives 0
    notes=(
        "Returns the running variance updated with the Bessel-corrected batch variance "
        "(n/(n-1), with n-1 floored at 1), normalizes with the biased one; with the default "
        "exponential_avg_factor=1 the returned variance is the unbiased batch variance."
    ),
)

TF_V1_LAYERS_FUSED = Convention(
    name="tf.compat.v1.layers.batch_normalization[fused]",
    api="tf.compat.v1.layers.batch_normalization (4-D/5-D input, fused path)",
    source=(
        "keras-team/tf-keras v2.21.0: tf_keras/src/legacy_tf_layers/normalization.py::batch_normalization; "
        "tf_keras/src/layers/normalization/batch_normalization.py::BatchNormalizationBase._fused_batch_norm, "
        "::_assign_moving_average"
    ),
    source_url=(
        "https://github.com/keras-team/tf-keras/blob/v2.21.0/"
        "tf_keras/src/layers/normalization/batch_normalization.py"
    ),
    default_eps=1e-3,
    default_momentum=0.99,
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=-1,
    ranks=(4, 5),
    running_var=Variance.UNBIASED,
    bessel_divisor_min=1,  # FusedBatchNormV3's rest_size_minus_one = max(rest_size - 1, 1), as TF_FUSED_BATCH_NORM
    notes=(
        "Moving statistics update only when the UPDATE_OPS collection is run (graph mode: "
        "moving -= (moving - batch) * (1 - momentum), momentum a float32 tensor). The fused kernel "
        "returns the Bessel-corrected variance, which the layer averages as is "
        "(_bessels_correction_test_only=True). fused=True falls back to the non-fused path without "
        "a word for float64 or rank 2/3 inputs (V1 behaviour in build())."
    ),
)

TF_V1_LAYERS_NONFUSED = replace(
    TF_V1_LAYERS_FUSED,
    name="tf.compat.v1.layers.batch_normalization[non-fused]",
    api="tf.compat.v1.layers.batch_normalization (2-D/3-D input or fused=False)",
    ranks=(2, 3, 4, 5),
    running_var=Variance.BIASED,
    bessel_divisor_min=0,
    notes=(
        "Moving statistics update only when the UPDATE_OPS collection is run. The non-fused path "
        "averages the biased variance from tf.nn.moments; a Python-float momentum becomes the float32 "
        "decay tf.convert_to_tensor(1.0 - momentum), cast to the variable's dtype."
    ),
)

TF_TUTORIAL_EMA_BATCHNORM = Convention(
    name="tf1-tutorial batch norm (ExponentialMovingAverage)",
    api=(
        "hand-written TF1 layer: tf.nn.moments, tf.compat.v1.train.ExponentialMovingAverage(decay) applied "
        "to the batch mean/variance in tf.cond's training branch, tf.nn.batch_normalization"
    ),
    source=(
        "tensorflow/tensorflow v2.21.0: tensorflow/python/training/moving_averages.py::"
        "ExponentialMovingAverage.apply, ::assign_moving_average, ::_zero_debias; "
        "tensorflow/python/ops/nn_impl.py::moments, ::batch_normalization; the layer as TF1-era tutorials "
        "and Q&A answers write it (ema.apply inside tf.cond's training branch, ema.average for inference)"
    ),
    source_url=(
        "https://github.com/tensorflow/tensorflow/blob/v2.21.0/tensorflow/python/training/moving_averages.py"
    ),
    default_eps=None,  # the tutorial's own argument; tf.nn.batch_normalization has no default
    default_momentum=None,  # ExponentialMovingAverage's decay is required
    momentum_style=MomentumStyle.OLD_WEIGHT,  # shadow -= (shadow - batch) * (1 - decay)
    channel_axis=-1,
    running_var=Variance.BIASED,
    zero_debias=False,
    notes=(
        "Shadows of tensors start at zero, the variance's too (slot_creator.create_zeros_slot); "
        "decay is a float32 tensor, 1 - decay is formed in float32 and cast to the shadow's dtype. "
        "zero_debias (off by default) applies to tensors only. num_updates (not modelled) would clamp "
        "decay to min(decay, (1 + n) / (10 + n))."
    ),
)

TF_TUTORIAL_EMA_ZERO_DEBIAS = replace(
    TF_TUTORIAL_EMA_BATCHNORM,
    name="tf1-tutorial batch norm (ExponentialMovingAverage, zero_debias=True)",
    zero_debias=True,
    notes=(
        "ExponentialMovingAverage(decay, zero_debias=True): _zero_debias keeps biased <- biased - "
        "(biased - batch) * (1 - decay) and local_step t, and sets shadow = biased / (1 - decay**t), "
        "the bias factor formed with pow in the shadow's dtype."
    ),
)

KERAS3_BATCHNORM = Convention(
    name="keras.layers.BatchNormalization",
    api="keras.layers.BatchNormalization (Keras 3)",
    source="keras-team/keras v3.15.1: keras/src/layers/normalization/batch_normalization.py::BatchNormalization.call",
    source_url=(
        "https://github.com/keras-team/keras/blob/v3.15.1/"
        "keras/src/layers/normalization/batch_normalization.py"
    ),
    default_eps=1e-3,
    default_momentum=0.99,
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=-1,
    running_var=Variance.BIASED,
    notes=(
        "moving_variance averages the biased batch variance from ops.moments on every backend "
        "(moving * momentum + batch * (1 - momentum), 1 - momentum formed as a Python float). call() casts x "
        "to result_type(dtype, float32): float16/bfloat16 are computed in float32 (ops.moments' own float16 "
        "upcast never triggers), and float64 too except on tensorflow (keras/src/backend/common/dtypes.py "
        "BIT64_TO_BIT32_DTYPE). Variance: tf.nn.moments and jnp.var two-pass; the torch backend one-pass "
        "mean(x**2) - mean(x)**2, unclamped; synchronized=True (tensorflow only) is one-pass clamped at 0 "
        "under a distribution strategy, else tf.nn.moments. gamma, beta, moving statistics: variable dtype "
        "(float32 under mixed_float16/mixed_bfloat16), autocast=False."
    ),
)

FLAX_LINEN_BATCHNORM = Convention(
    name="flax.linen.BatchNorm",
    api="flax.linen.BatchNorm",
    source="google/flax v0.12.8: flax/linen/normalization.py::BatchNorm.__call__, _compute_stats, _normalize",
    source_url="https://github.com/google/flax/blob/v0.12.8/flax/linen/normalization.py",
    default_eps=1e-5,
    default_momentum=0.99,
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=-1,
    running_var=Variance.BIASED,
    notes=(
        "use_fast_variance=True (default) computes max(0, E[x^2] - E[x]^2); running averages are "
        "not updated during init."
    ),
)

FLAX_NNX_BATCHNORM = replace(
    FLAX_LINEN_BATCHNORM,
    name="flax.nnx.BatchNorm",
    api="flax.nnx.BatchNorm",
    source="google/flax v0.12.8: flax/nnx/nn/normalization.py::BatchNorm.__call__",
    source_url="https://github.com/google/flax/blob/v0.12.8/flax/nnx/nn/normalization.py",
    notes="Same statistics as linen; running statistics are updated on every training call.",
)

HAIKU_BATCHNORM = Convention(
    name="haiku.BatchNorm",
    api="hk.BatchNorm",
    source=(
        "google-deepmind/dm-haiku v0.0.17: haiku/_src/batch_norm.py::BatchNorm.__call__; "
        "haiku/_src/moving_averages.py::ExponentialMovingAverage"
    ),
    source_url="https://github.com/google-deepmind/dm-haiku/blob/v0.0.17/haiku/_src/batch_norm.py",
    default_eps=1e-5,
    default_momentum=None,  # decay_rate is a required argument
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=-1,
    running_var=Variance.BIASED,
    zero_debias=True,
    notes=(
        "Moving averages are zero-debiased: after one step they equal the batch statistics "
        "(hk.ExponentialMovingAverage: hidden <- hidden * d + v * (1 - d), average = hidden / (1 - d**counter), "
        "d converted to the value's dtype; decay_rate must lie in [0, 1)). Everything is in the input's dtype, "
        "parameters and states included; var = mean(x**2) - mean(x)**2, not clamped at 0."
    ),
)

EQUINOX_BATCHNORM = Convention(
    name="equinox.nn.BatchNorm",
    api='equinox.nn.BatchNorm(..., mode="batch"), vmapped over the batch with a matching axis_name',
    source="patrick-kidger/equinox v0.13.8: equinox/nn/_batch_norm.py::BatchNorm.__init__, BatchNorm.__call__",
    source_url="https://github.com/patrick-kidger/equinox/blob/v0.13.8/equinox/nn/_batch_norm.py",
    default_eps=1e-5,
    default_momentum=0.99,
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=1,  # the layer sees (C, *spatial); vmap over axis 0 makes C axis 1 of the batch
    running_var=Variance.BIASED,
    zero_debias=True,
    notes=(
        'mode="batch" (mode unset means "ema", with a warning): training normalizes with the batch mean and '
        "the biased variance max(0, mean((x - mean)**2)); state (counter, hidden) with hidden <- hidden * m + "
        "batch * (1 - m); inference normalizes with hidden / (1 - m**counter), or hidden itself at counter 0. "
        "The initial hidden is (0, 1), so the variance is debiased from 1 rather than 0: after one step "
        "inference uses var + m / (1 - m) (see conformance/known/jax.py)."
    ),
)

ONNX_BATCHNORM = Convention(
    name="onnx.BatchNormalization-15",
    api="ONNX BatchNormalization (opset 15, training_mode=1)",
    source=(
        "onnx/onnx v1.23.2: onnx/defs/nn/defs.cc::BatchNormalization ver15; "
        "onnx/reference/ops/op_batch_normalization.py::_batchnorm_training_mode"
    ),
    source_url="https://github.com/onnx/onnx/blob/v1.23.2/docs/Operators.md#BatchNormalization",
    default_eps=1e-5,
    default_momentum=0.9,
    momentum_style=MomentumStyle.OLD_WEIGHT,
    channel_axis=1,
    running_var=Variance.BIASED,
    notes=(
        "The spec's running variance uses the population (biased) variance. epsilon and momentum are "
        "float attributes (float32): 1e-5 is 9.999999747e-06, and onnx.reference computes 1 - momentum "
        "in float32."
    ),
)

CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        TORCH_BATCHNORM1D,
        TORCH_BATCHNORM2D,
        TORCH_BATCHNORM3D,
        TORCH_FUNCTIONAL,
        TF_NN_BATCH_NORMALIZATION,
        TF_FUSED_BATCH_NORM,
        TF_V1_LAYERS_FUSED,
        TF_V1_LAYERS_NONFUSED,
        TF_TUTORIAL_EMA_BATCHNORM,
        TF_TUTORIAL_EMA_ZERO_DEBIAS,
        KERAS3_BATCHNORM,
        FLAX_LINEN_BATCHNORM,
        FLAX_NNX_BATCHNORM,
        HAIKU_BATCHNORM,
        EQUINOX_BATCHNORM,
        ONNX_BATCHNORM,
    )
}


def convention(name: str) -> Convention:
    """The record called `name`, with an error that lists the known names."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown convention {name!r}; known: {', '.join(sorted(CONVENTIONS))}"
        ) from None


def new_batch_weight(conv: Convention, momentum: float) -> float:
    """w, the weight on the new batch statistic, for a momentum given in `conv`'s style.

    The map is its own inverse: new_batch_weight(conv, w) is also the momentum that gives weight w."""
    return momentum if conv.momentum_style is MomentumStyle.NEW_WEIGHT else 1.0 - momentum


def _swapped(v: Variance) -> Variance:
    return Variance.UNBIASED if v is Variance.BIASED else Variance.BIASED


def _swapped_style(s: MomentumStyle) -> MomentumStyle:
    return MomentumStyle.OLD_WEIGHT if s is MomentumStyle.NEW_WEIGHT else MomentumStyle.NEW_WEIGHT


@dataclass(frozen=True)
class ConventionMistake:
    """One deliberately wrong version of a record: `change(conv)` where `applies(conv)` holds.

    `quantities` are the outputs the mistake changes (the oracle's names), in training calls and, where
    `in_eval`, in eval calls too: where a diagnosis looks for it (spec/diagnosis.py)."""

    name: str
    applies: Callable[[Convention], bool]
    change: Callable[[Convention], Convention]
    quantities: frozenset[str]
    in_eval: bool = False


_NORMALIZED = frozenset({"y", "saved_invstd", "dx", "dgamma"})  # what s = s(var, eps) reaches
_RUNNING = frozenset({"running_mean", "running_var"})

EPS_OUTSIDE = ConventionMistake(
    "eps outside the square root", lambda c: c.eps_placement is EpsPlacement.INSIDE_SQRT,
    lambda c: replace(c, eps_placement=EpsPlacement.OUTSIDE_SQRT), _NORMALIZED, in_eval=True)
NORMALIZED_UNBIASED, NORMALIZED_BIASED = (
    ConventionMistake(f"normalized with the {v.value} variance", lambda c, v=v: c.normalize_with is _swapped(v),
                      lambda c, v=v: replace(c, normalize_with=v), _NORMALIZED | {"saved_var"})
    for v in (Variance.UNBIASED, Variance.BIASED)
)
RUNNING_BIASED, RUNNING_UNBIASED = (
    ConventionMistake(f"running variance {v.value} instead of {_swapped(v).value}",
                      lambda c, v=v: c.tracks_running_stats and c.running_var is _swapped(v),
                      lambda c, v=v: replace(c, running_var=v), frozenset({"running_var"}))
    for v in (Variance.BIASED, Variance.UNBIASED)
)
MOMENTUM_REVERSED = ConventionMistake(
    "momentum applied the wrong way round", lambda c: c.tracks_running_stats,
    lambda c: replace(c, momentum_style=_swapped_style(c.momentum_style)), _RUNNING)
ZERO_DEBIASED, NOT_ZERO_DEBIASED = (
    ConventionMistake(name, lambda c, on=on: c.tracks_running_stats and c.zero_debias is not on,
                      lambda c, on=on: replace(c, zero_debias=on), _RUNNING)
    for name, on in (("zero-debiased moving average", True), ("moving average not zero-debiased", False))
)

CONVENTION_MISTAKES = (EPS_OUTSIDE, NORMALIZED_UNBIASED, NORMALIZED_BIASED, RUNNING_BIASED, RUNNING_UNBIASED,
                       MOMENTUM_REVERSED, ZERO_DEBIASED, NOT_ZERO_DEBIASED)


def variants(conv: Convention) -> dict[str, Convention]:
    """Deliberately wrong versions of `conv`, keyed by the mistake each one models (`CONVENTION_MISTAKES` that
    apply to it). A backend whose outputs match one of these is diagnosed by that name rather than just failed."""
    return {m.name: replace(m.change(conv), name=f"{conv.name} with {m.name}")
            for m in CONVENTION_MISTAKES if m.applies(conv)}
