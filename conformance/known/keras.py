"""Known discrepancies of the keras adapters (see conformance/records.py for what an entry means).

The Keras 3 torch backend is declared one-pass (its ops.moments is E[x^2] - E[x]^2 by design); what is
recorded here is what the declared semantics do not cover: NaN where that variance comes out below -eps,
and a float64 dtype policy that computes in float32 on the jax and torch backends.
"""

from dataclasses import replace

import numpy as np

from ...spec import Inputs, Mode, RunningStats, VarianceAlgorithm, precision_for
from ...spec.error_model import statistics_error
from ...spec.oracle import batch_stats
from ..arrays import round_to
from ..records import KnownDiscrepancy

TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
KERAS = "keras.layers.BatchNormalization"
_ONE_PASS_FLOAT32 = precision_for("float32", variance=VarianceAlgorithm.ONE_PASS)


def one_pass_may_go_negative(inputs: Inputs) -> np.ndarray:
    """Per channel: the float32 one-pass variance's error bound reaches var + eps (or its sums overflow),
    so the computed var + eps may be negative and rsqrt of it NaN."""
    stats = batch_stats(inputs.x, inputs.axis)
    err = statistics_error(inputs.x, stats, inputs.axis, _ONE_PASS_FLOAT32)
    return (err.var_one_pass >= stats.var + inputs.eps) | err.overflow_one_pass


def beyond_float32(inputs: Inputs) -> np.ndarray:
    """Per channel: x holds finite values beyond float32's range, which the float32 cast makes infinite (what
    follows from those infinities depends on the order of the backend's operations: no claim is made there)."""
    rows = np.moveaxis(np.asarray(inputs.x, dtype=np.float64), inputs.axis, 0).reshape(np.shape(inputs.x)[inputs.axis], -1)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(rows) & (np.abs(rows) > np.finfo(np.float32).max)).any(axis=1)


def as_float32(inputs: Inputs) -> Inputs:
    """The inputs as a float64 layer on jax/torch sees them: x, dy, gamma, beta and the moving statistics
    cast to float32 before any arithmetic."""
    f32 = lambda a: None if a is None else round_to(a, "float32").astype(np.float64)  # noqa: E731
    r = inputs.running
    return replace(
        inputs, x=f32(inputs.x), dy=f32(inputs.dy), gamma=f32(inputs.gamma), beta=f32(inputs.beta),
        running=None if r is None else RunningStats(f32(r.mean), f32(r.var), r.count),
    )


_FLOAT64_EVIDENCE = (
    "keras v3.15.1 keras/src/layers/normalization/batch_normalization.py:345 "
    "`compute_dtype = backend.result_type(inputs.dtype, \"float32\")`, and "
    "keras/src/backend/common/dtypes.py:240 and :274-277 `BIT64_TO_BIT32_DTYPE = {... \"float64\": \"float64\" "
    "if config.backend() == \"tensorflow\" else \"float32\"}` / \"Force to be 32-bit dtype when encountering "
    "64-bit dtype. This is to be aligned with JAX's default behavior.\" (JAX_ENABLE_X64=1 makes no difference). "
    "Minimal: BatchNormalization(dtype=\"float64\", center=False, scale=False), x = [[0.1, 0.2], [0.3, 0.7]], "
    "training=True, eps 1e-3: y[0, 0] = -0.953462600708 (jax and torch; tensorflow -0.953462589246), "
    "expected -0.953462589246; inputs, moving statistics, gamma and beta are cast to float32 first."
)
_FLOAT64_EXPLANATION = (
    "A layer with dtype policy float64 computes in float32 on the jax and torch backends: Keras's type "
    "promotion maps result_type(float64, float32) to float32 except on tensorflow, so call() casts x, gamma, "
    "beta and the moving statistics to float32 and only the result back to float64 (the moving statistics "
    "are float64 variables holding float32 values). Outputs are ~1e7 times the float64 bound, within the "
    "float32 arithmetic bound. A float64 value beyond float32's range becomes Inf in the cast (keras.layers."
    "BatchNormalization[jax], float64 eval backward, a channel near 1e102: dgamma Inf where 8.0e102 is exact); "
    "the record makes no claim about such channels."
)


def _float64_policy(keras_backend: str, variance: VarianceAlgorithm, modes=(), **extra) -> KnownDiscrepancy:
    return KnownDiscrepancy(
        id=f"keras-{keras_backend}-float64-policy-computes-in-float32" + ("-training" if modes == TRAINING else ""),
        backends=f"{KERAS}[{keras_backend}]",
        dtypes=("float64",),
        modes=modes,
        quantities=("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
        precision=lambda dtype: precision_for(dtype, compute="float32", stats="float64", variance=variance,
                                              flush_subnormals=keras_backend == "jax"),  # XLA:CPU FTZ, as declared
        adjust=as_float32,
        explanation=_FLOAT64_EXPLANATION,
        evidence=_FLOAT64_EVIDENCE,
        **{"unchecked": beyond_float32, **extra},  # a record's own `unchecked` includes beyond_float32
    )


EVAL = (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD)


def _float64_policy_eval(keras_backend: str, variance: VarianceAlgorithm) -> KnownDiscrepancy:
    """The float64-policy record for the eval modes: the outputs computed in float32, the moving statistics left
    as they were given (float64 variables the eval call only reads), so they keep the eval rule."""
    return replace(
        _float64_policy(keras_backend, variance, modes=EVAL),
        id=f"keras-{keras_backend}-float64-policy-computes-in-float32-eval",
        quantities=("y", "dx", "dgamma", "dbeta"),
        explanation=_FLOAT64_EXPLANATION + " In eval the moving statistics are only read: the variables keep "
        "the float64 values given (checked bit for bit by the declared rule), the outputs follow the float32 "
        "arithmetic.",
        evidence=_FLOAT64_EVIDENCE + " Eval (found when eval calls began returning the moving statistics): a "
        "moving mean of 1.4706815e-64 stays 1.4706815e-64 after training=False (float32 would make it 0).",
    )


ENTRIES: tuple[KnownDiscrepancy, ...] = (
    # eval first (the first covering entry applies): the float32 arithmetic, the moving statistics untouched
    _float64_policy_eval("torch", VarianceAlgorithm.ONE_PASS),
    _float64_policy_eval("jax", VarianceAlgorithm.TWO_PASS),
    # torch training: float32 arithmetic, and (as the NaN entry below) no claim where one-pass may go negative
    _float64_policy("torch", VarianceAlgorithm.ONE_PASS, modes=TRAINING,
                    unchecked=lambda i: one_pass_may_go_negative(i) | beyond_float32(i)),
    _float64_policy("torch", VarianceAlgorithm.ONE_PASS),
    _float64_policy("jax", VarianceAlgorithm.TWO_PASS),
    KnownDiscrepancy(
        id="keras-torch-one-pass-variance-nan",
        backends=f"{KERAS}[torch*",
        modes=TRAINING,
        when=lambda i: bool(one_pass_may_go_negative(i).any()),
        unchecked=one_pass_may_go_negative,
        quantities=("y", "dx", "dgamma"),
        explanation=(
            "The torch backend's ops.moments computes the variance as mean(x**2) - mean(x)**2 in float32 and "
            "does not clamp it at zero (the tensorflow backend's synchronized path and flax do): where rounding "
            "makes it more negative than -eps, rsqrt(var + eps) is NaN and so are y, dx and dgamma of that "
            "channel, whose exact values are finite (0 or beta for a constant channel). The record checks the "
            "other channels against the declared one-pass semantics and makes no claim about channels whose "
            "one-pass error bound reaches var + eps."
        ),
        evidence=(
            "keras v3.15.1 keras/src/backend/torch/nn.py:974-982 (moments): `variance = torch.mean("
            "torch.square(x), dim=axes, keepdim=True) - torch.square(mean)` (\"faster but less numerically "
            "stable\"), no clamp; :1040 `variance.add(epsilon).rsqrt_()`. Minimal: KERAS_BACKEND=torch, "
            "BatchNormalization(center=False, scale=False, epsilon=1e-5), training=True, float32 "
            "x = [[10000.1259765625], [9999.8681640625]]: y = [nan, nan], expected [0.99970, -0.99970]; "
            "float16 (or mixed_float16) x = ten times -56.21875: y = nan, expected 0."
        ),
    ),
)
