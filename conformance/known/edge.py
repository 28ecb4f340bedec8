"""Recorded edge behaviours: where a framework does something other than the spec's edge cases require
(spec/edge_cases.py, SPEC.md §5). Data only, no framework import. An entry matches an outcome of
conformance/edge.py by backend name, case id and outcome description (`*` as the only wildcard in each),
optionally restricted to modes and dtypes; the first matching entry is the one reported, so the more
specific entries come first. Source lines are those of the installed versions (torch 2.13.0,
tensorflow 2.21.0, tf_keras 2.21.0, keras 3.15.1, flax 0.12.8, dm-haiku 0.0.17, equinox 0.13.8); "observed"
is what the edge battery's input for the case returned (x as in the case: n values of 3 channels).
Entries record semantics only (an outcome's class, a refusal or its absence, a value no rounding explains):
a finite value within the error model's bound for the dtype agrees, with a precision note, and needs no entry.
"""

from dataclasses import replace

from ...spec import Mode
from ..records import EdgeRecord

ACCEPTS = "accepts it: returns without raising*"
RUNNING_POISONED = "running_mean NaN in every channel (spec: finite); running_var NaN in every channel (spec: finite)"
DGAMMA_NAN = "dgamma NaN in every channel (spec: finite)"
V1_LAYERS = "tf.compat.v1.layers.batch_normalization"
TUTORIAL = "tf.nn.batch_normalization+ExponentialMovingAverage[tutorial layer]"
FORGOTTEN = V1_LAYERS + "[fused, update ops forgotten]"
TF_KERAS_BN = "tf_keras v2.21.0 tf_keras/src/layers/normalization/batch_normalization.py"
KERAS_BN = "keras v3.15.1 keras/src/layers/normalization/batch_normalization.py"
FLAX_BN = "flax v0.12.8 flax/linen/normalization.py"
DGAMMA_MECHANISM = (
    "dgamma of an empty batch is an empty sum, 0; autodiff through y = (x − mean)·rsqrt(var + eps)·gamma + beta "
    "forms it as rsqrt(var + eps) · Σ dy·(x − mean) (or through the folded form), and the empty batch's "
    "var is 0/0 = NaN, so 0 · NaN = NaN: one optimizer step on an empty batch would write NaN into gamma."
)

ENTRIES: tuple[EdgeRecord, ...] = (
    # ---- deliberately broken usage patterns (their main-battery records explain the mistake)
    EdgeRecord(
        id="edge-tf-v1-layers-update-ops-forgotten",
        backends=FORGOTTEN,
        case="*",
        outcome=lambda o: o.startswith("running_mean finite") or o.endswith("weight w = 0"),
        explanation=(
            "The update ops of the UPDATE_OPS collection are never run (the main battery's "
            "tf-v1-layers-update-ops-forgotten), so the moving statistics never change: a NaN or Inf input "
            "cannot poison them and a momentum outside [0, 1] moves them with weight 0."
        ),
        evidence=(
            f"{TF_KERAS_BN}:1008-1044 (the moving-average updates are ops added to UPDATE_OPS, run only when the "
            "caller adds them as control dependencies). Observed: nan-in-x training leaves running_mean = [0.5, "
            "-0.5, 1] and running_var = [2, 0.5, 4], the values given."
        ),
    ),
    EdgeRecord(
        id="edge-tf-tutorial-train-eps-hard-coded",
        backends=TUTORIAL + "[train eps hard-coded 1e-5]",
        case="eps-zero-constant-channel",
        outcome="*finite (spec: *",
        explanation=(
            "The tutorial layer's training branch uses a hard-coded eps of 1e-5 instead of the one passed (the "
            "main battery's tf-tutorial-train-eps-hard-coded), so eps = 0 never reaches it: the constant channel "
            "gives y = beta and finite gradients where the spec has 0/0."
        ),
        evidence="bnconf adapters/tensorflow_layers.py TutorialEmaBatchNormalization (train_eps = TUTORIAL_TRAIN_EPS). "
                 "Observed: eps 0, channel 0 constant 0.75: y[:, 0] = 0.25 = beta[0], spec NaN.",
    ),
    # ---- a momentum outside [0, 1] is taken silently
    EdgeRecord(
        id="edge-torch-momentum-not-checked",
        backends="torch.nn.*",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation=(
            "PyTorch checks the batch size and eps of a training call, not the momentum: 1.5 moves the running "
            "statistics past the batch statistic (w = 1.5)."
        ),
        evidence=(
            "torch v2.13.0 torch/nn/modules/batchnorm.py:54 `self.momentum = momentum` (no check); "
            "torch/nn/functional.py:2888-2896, batch_norm checks `_verify_batch_size` and `eps`, nothing else. "
            "Observed: BatchNorm1d(3, momentum=1.5).train() on x = [[0.5, 1, -2], [1.5, 3, 0], [-1, 2, 4], "
            "[3, -1, 1]] from running_mean 0: running_mean = [1.5, 1.875, 1.125] = 1.5 * batch mean."
        ),
    ),
    EdgeRecord(
        id="edge-tf-fused-exponential-avg-factor-not-checked",
        backends="tf.compat.v1.nn.fused_batch_norm*",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation="fused_batch_norm documents exponential_avg_factor as 'usually between 0 and 1' and checks only "
                    "that running statistics are given when it is not 1.",
        evidence="tensorflow v2.21.0 tensorflow/python/ops/nn_impl.py:1552 (docstring) and :1575-1579 (the only "
                 "check). Observed: exponential_avg_factor 1.5, running_mean moved with w = 1.5.",
    ),
    EdgeRecord(
        id="edge-tf-v1-layers-momentum-not-checked",
        backends=V1_LAYERS + "*",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation="The TF1 layer stores momentum as given and updates with decay 1 − momentum = −0.5.",
        evidence=f"{TF_KERAS_BN}:213 `self.momentum = momentum`; :867 `decay = tf.convert_to_tensor(1.0 - momentum)`. "
                 "Observed: momentum 1.5, running_mean moved with w = -0.5 (away from the batch mean).",
    ),
    EdgeRecord(
        id="edge-tf-ema-decay-not-checked",
        backends=TUTORIAL + "*",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation=(
            "tf.compat.v1.train.ExponentialMovingAverage stores any decay; 1.5 gives w = −0.5, or with "
            "zero_debias (after one earlier step) w = −0.5 / (1 − 1.5²) = 0.4."
        ),
        evidence="tensorflow v2.21.0 tensorflow/python/training/moving_averages.py:482 `self._decay = decay` (no "
                 "check). Observed: decay 1.5, running_mean moved with w = -0.5 (w = 0.4 with zero_debias).",
    ),
    EdgeRecord(
        id="edge-keras-momentum-not-checked",
        backends="keras.layers.BatchNormalization*",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation="Keras 3 converts momentum to float and uses it as given: 1.5 gives w = 1 − 1.5 = −0.5.",
        evidence=f"{KERAS_BN}:191 `self.momentum = float(momentum)`; :385-390 `moving_mean * self.momentum + mean * "
                 "(1.0 - self.momentum)`. Observed on every Keras backend: running_mean moved with w = -0.5.",
    ),
    EdgeRecord(
        id="edge-flax-momentum-not-checked",
        backends="flax.*",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation="Flax (linen and NNX) uses momentum as given: 1.5 gives w = −0.5.",
        evidence=f"{FLAX_BN}:310 `momentum: float = 0.99` (a dataclass field, no check), :401-404 "
                 "`ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean`; "
                 "flax/nnx/nn/normalization.py:332, :405-408 likewise. Observed: running_mean moved with w = -0.5.",
    ),
    EdgeRecord(
        id="edge-haiku-decay-not-checked",
        backends="haiku.BatchNorm",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation=(
            "Haiku documents the EMA decay as 'Must in [0, 1)' but does not check it; zero-debiased, decay 1.5 "
            "after one earlier step gives w = −0.5 / (1 − 1.5²) = 0.4."
        ),
        evidence="dm-haiku v0.0.17 haiku/_src/moving_averages.py:57 (docstring) and :67 `self.decay = decay`. "
                 "Observed: decay_rate 1.5, running_mean moved with w = 0.4.",
    ),
    EdgeRecord(
        id="edge-equinox-momentum-not-checked",
        backends="equinox.nn.BatchNorm",
        case="momentum-outside-unit-interval",
        outcome=ACCEPTS,
        explanation="Equinox documents momentum as 'a value between 0 and 1 exclusive' but does not check it.",
        evidence="equinox v0.13.8 equinox/nn/_batch_norm.py:117-118 (docstring), :171 `self.momentum = momentum`. "
                 "Observed: momentum 1.5, zero-debiased after one earlier step: running_mean moved with w = 0.4.",
    ),
    # ---- an empty training batch writes NaN into the running statistics
    EdgeRecord(
        id="edge-tf-fused-empty-batch-poisons-running-stats",
        backends="tf.compat.v1.nn.fused_batch_norm*",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation="The fused kernel averages over 0 values (0/0) and updates the running statistics with it.",
        evidence="Observed (tensorflow 2.21.0 CPU): fused_batch_norm(zeros([0, 1, 1, 3]), ones(3), zeros(3), "
                 "mean=[0.5, -0.5, 1], variance=[2, 0.5, 4], is_training=True, exponential_avg_factor=0.5) returns an empty y "
                 "and running mean and variance [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-tf-v1-layers-fused-eval-empty-batch-poisons-running-stats",
        backends=V1_LAYERS + "[fused]",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.EVAL_FORWARD,),
        explanation=(
            "In eval too: with `training` a placeholder fed False, the fused layer's update ops still run "
            "moving <- moving - (moving - mean) * (1 - 1.0) with mean the inference op's output, and "
            "FusedBatchNormV3 in inference returns NaN batch statistics for an empty batch: (moving - NaN) * 0 "
            "= NaN, so one eval step on an empty batch, run with the update ops attached as documented, poisons "
            "the moving statistics (see the main battery's tf-v1-layers-fused-eval-update-turns-inf-into-nan)."
        ),
        evidence=f"{TF_KERAS_BN}:1001-1003 (momentum = smart_cond(training, momentum, 1.0)), :978-988 "
                 "(_fused_batch_norm_inference returns the op's mean and variance), :867-870 (update_delta = "
                 "(variable - value) * (1 - momentum), not guarded: input_batch_size is None, see "
                 "edge-tf-v1-layers-empty-batch-poisons-running-stats). Observed: "
                 "tf.compat.v1.nn.fused_batch_norm(zeros([0, 2, 2, 3]), mean=[0.5, -0.5, 1], variance=[2, 0.5, 4], "
                 "is_training=False) returns mean and variance [nan, nan, nan]; the layer's running mean and "
                 "variance after the eval step [nan, nan, nan]; the non-fused layer leaves them unchanged.",
    ),
    EdgeRecord(
        id="edge-tf-v1-layers-empty-batch-poisons-running-stats",
        backends=V1_LAYERS + "*",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation=(
            "tf_keras guards the moving-average update against an empty batch only under a tf.distribute "
            "strategy with partial-batch handling; otherwise it updates with the empty batch's NaN moments."
        ),
        evidence=f"{TF_KERAS_BN}:711-716 and :925-927 (`input_batch_size = None` unless "
                 "`self._support_zero_size_input()`), :849-862 (true only under such a strategy), :871-875 (the "
                 "`tf.where(inputs_size > 0, ...)` guard it skips). Observed: running mean and variance "
                 "[nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-tf-ema-empty-batch-poisons-running-stats",
        backends=TUTORIAL + "*",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation="tf.nn.moments of an empty batch is NaN and ExponentialMovingAverage.apply averages it in.",
        evidence="tensorflow v2.21.0 tensorflow/python/training/moving_averages.py:493 apply() (no check of its "
                 "inputs). Observed: running mean and variance [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-keras-empty-batch-poisons-running-stats",
        backends="keras.layers.BatchNormalization*",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation="Keras 3 updates the moving statistics with ops.moments of the batch unconditionally; of an "
                    "empty batch they are 0/0.",
        evidence=f"{KERAS_BN}:385-390 (the assign, no batch-size check). Observed on every Keras backend and "
                 "policy: moving mean and variance [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-flax-empty-batch-poisons-running-stats",
        backends="flax.*",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation="Flax updates ra_mean/ra_var with the batch's mean and variance unconditionally.",
        evidence=f"{FLAX_BN}:401-404; flax/nnx/nn/normalization.py:405-408. Observed: [nan, nan, nan] for both.",
    ),
    EdgeRecord(
        id="edge-haiku-empty-batch-poisons-running-stats",
        backends="haiku.BatchNorm",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation="Haiku feeds the batch's jnp.mean (NaN over 0 values) to its moving averages unconditionally.",
        evidence="dm-haiku v0.0.17 haiku/_src/batch_norm.py:170-171 (jnp.mean), :186-188 (`self.mean_ema(mean)`, "
                 "`self.var_ema(var)`). Observed: [nan, nan, nan] for both.",
    ),
    EdgeRecord(
        id="edge-equinox-empty-batch-poisons-running-stats",
        backends="equinox.nn.BatchNorm",
        case="empty-batch",
        outcome=RUNNING_POISONED,
        modes=(Mode.TRAIN_FORWARD,),
        explanation="Equinox averages the batch statistics into its hidden state unconditionally.",
        evidence="equinox v0.13.8 equinox/nn/_batch_norm.py:253-256 (`new_hidden_mean = hidden_mean * "
                 "self.momentum + mean * (1 - self.momentum)`). Observed: [nan, nan, nan] for both.",
    ),
    # ---- dgamma of an empty batch is NaN, not the empty sum 0
    EdgeRecord(
        id="edge-tf-nn-empty-batch-dgamma-nan",
        backends="tf.nn.batch_normalization*",  # tf.nn backends and the tutorial layer built on them
        case="empty-batch",
        outcome=DGAMMA_NAN,
        modes=(Mode.TRAIN_BACKWARD,),
        explanation=DGAMMA_MECHANISM,
        evidence="Observed (tensorflow 2.21.0, eager): with tf.GradientTape, mean, var = tf.nn.moments(zeros([0, 3]), "
                 "[0]); y = tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3): dy/dgamma = [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-tf-v1-layers-non-fused-empty-batch-dgamma-nan",
        backends=V1_LAYERS + "[non-fused]",
        case="empty-batch",
        outcome=DGAMMA_NAN,
        modes=(Mode.TRAIN_BACKWARD,),
        explanation=DGAMMA_MECHANISM,
        evidence=f"{TF_KERAS_BN}:669-674 (tf.nn moments of the batch) feeding tf.nn.batch_normalization. "
                 "Observed: dgamma [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-keras-empty-batch-dgamma-nan",
        backends="keras.layers.BatchNormalization*",
        case="empty-batch",
        outcome=DGAMMA_NAN,
        modes=(Mode.TRAIN_BACKWARD,),
        explanation=DGAMMA_MECHANISM,
        evidence=f"{KERAS_BN} call(): ops.batch_normalization(x, mean, variance, ...) with the empty batch's "
                 "moments. Observed on every Keras backend: dgamma [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-flax-empty-batch-dgamma-nan",
        backends="flax.*",
        case="empty-batch",
        outcome=DGAMMA_NAN,
        modes=(Mode.TRAIN_BACKWARD,),
        explanation=DGAMMA_MECHANISM,
        evidence=f"{FLAX_BN}:206 (_normalize: `mul = lax.rsqrt(var + epsilon)`, then times the scale). "
                 "Observed: dgamma [nan, nan, nan].",
    ),
    EdgeRecord(
        id="edge-haiku-empty-batch-dgamma-nan",
        backends="haiku.BatchNorm",
        case="empty-batch",
        outcome=DGAMMA_NAN,
        modes=(Mode.TRAIN_BACKWARD,),
        explanation=DGAMMA_MECHANISM,
        evidence="dm-haiku v0.0.17 haiku/_src/batch_norm.py:181 `var = mean_of_squares - jnp.square(mean)` (NaN for "
                 "an empty batch), then :204 `inv = scale * jax.lax.rsqrt(var + eps)`. Observed: dgamma "
                 "[nan, nan, nan].",
    ),
    # ---- NaN/Inf reach the eval gradient through batch moments computed in eval too
    EdgeRecord(
        id="edge-tf-v1-layers-non-fused-eval-gradient-through-batch-moments",
        backends=V1_LAYERS + "[non-fused]",
        case="*-in-x",
        outcome="dx NaN in channel 0 (spec: finite)",
        modes=(Mode.EVAL_BACKWARD,),
        explanation=(
            "With `training` a tensor (a TF1 placeholder), the non-fused layer computes the batch moments in eval "
            "too and selects the moving statistics with smart_cond; the moments' gradient receives 0 from the "
            "untaken branch and multiplies it by (x − mean), which is NaN in a channel holding a NaN or Inf, so "
            "0 · NaN reaches dx of that whole channel although eval's dx = dy·gamma·s does not depend on x."
        ),
        evidence=(
            f"{TF_KERAS_BN}:663-674 ('Some of the computations here are not necessary when training==False but not "
            "a constant'), :679-688 (smart_cond). Observed directly: tf.compat.v1.layers.batch_normalization(x, "
            "training=placeholder, fused=False), x = [[0.5, 1, -2], [nan, 3, 0], [-1, 2, 4], [3, -1, 1]], "
            "training fed False, dy = 1: dx[:, 0] = [nan, nan, nan, nan], dx[:, 1] = 0.9995 (y[:, 0] is NaN only "
            "at the NaN element, as the spec says)."
        ),
    ),
    EdgeRecord(
        id="edge-tf-tutorial-eval-gradient-through-batch-moments",
        backends=TUTORIAL + "*",
        case="*-in-x",
        outcome="dx NaN in channel 0 (spec: finite)",
        modes=(Mode.EVAL_BACKWARD,),
        explanation=(
            "The tutorial layer computes tf.nn.moments(x) outside its tf.cond(training, ...), so in eval the "
            "moments' gradient gets 0 from the untaken training branch and multiplies it by (x − mean), NaN in a "
            "channel holding a NaN or Inf: dx of that channel is NaN although eval's dx does not depend on x."
        ),
        evidence="bnconf adapters/tensorflow_layers.py TutorialEmaBatchNormalization._build: `batch_mean, batch_var = "
                 "tf.nn.moments(x, ...)` before `y = tf.cond(training, train_branch, inference_branch)`, as the "
                 "tutorial writes it. Observed: dx[:, 0] NaN, other channels finite.",
    ),
    # ---- float16 squares summed in float16
    EdgeRecord(
        id="edge-haiku-float16-one-pass-squares-overflow",
        backends="haiku.BatchNorm",
        case="float16-squares-overflow",
        outcome="*NaN in channels 0, 1 (spec: finite)*",
        dtypes=("float16",),
        explanation=(
            "Haiku computes in the input's dtype with the one-pass variance: jnp.mean(jnp.square(x)) of values "
            "near ±300 squares to ~9e4 > 65504, Inf in float16, and Inf − mean² is Inf or NaN, so y, the running "
            "variance, dx and dgamma of those channels are NaN where float32 statistics give finite values."
        ),
        evidence="dm-haiku v0.0.17 haiku/_src/batch_norm.py:170-171 `mean_of_squares = jnp.mean(jnp.square(inputs), "
                 "axis, keepdims=True)` and :181 `var = mean_of_squares - jnp.square(mean)` in inputs.dtype. "
                 "Observed: float16 x = 300 ± {2, 4} (variance 10): y NaN in that channel (and at -300 ± {1, 3}).",
    ),
)


# fused=True with float64 silently runs the non-fused path (conformance/known/tensorflow.py,
# tf-v1-layers-fused-float64-falls-back-to-non-fused): the non-fused layer's edge behaviours follow it there
ENTRIES += tuple(
    replace(r, id=r.id.replace("non-fused", "fused-float64"), backends=V1_LAYERS + "[fused*", dtypes=("float64",),
            explanation="fused=True with float64 inputs falls back to the non-fused layer (see "
                        "tf-v1-layers-fused-float64-falls-back-to-non-fused), which does this: " + r.explanation)
    for r in ENTRIES if r.backends == V1_LAYERS + "[non-fused]"
)
