"""Known discrepancies of the JAX adapters (see conformance/records.py for what an entry means).

What the declared precisions (adapters/jax_flax.py, jax_haiku.py, jax_equinox.py) do not cover: JAX's
reverse mode rounds gradient contributions to the half input format before adding them, and Equinox's
mode="batch" debiases its running statistics from an initial state that is not zero.
"""

from dataclasses import replace

import numpy as np

from ...spec import Mode, VarianceAlgorithm, precision_for
from ...spec.error_model import statistics_error
from ...spec.oracle import batch_stats, channels_first
from ..arrays import round_to
from ..records import KnownDiscrepancy

HALF = ("float16", "bfloat16")
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
_FAST, _STABLE = "", "[use_fast_variance=False]"
_VARIANCE = {_FAST: VarianceAlgorithm.ONE_PASS, _STABLE: VarianceAlgorithm.TWO_PASS}

_LINEN_EVIDENCE = (
    "flax v0.12.8 flax/linen/normalization.py:114 `x = x.astype(dtype)` (_compute_stats, float32) and :205 "
    "`y = x - mean` (float16 x promoted against the float32 mean): x enters twice through a convert to "
    "float32, and jax.vjp transposes each convert on its own, so each path's float32 cotangent is rounded "
    "to float16 before the two are added; they nearly cancel when dy is close to a multiple of x - mean. "
    "Minimal: BatchNorm(dtype=float16, use_scale=False, use_bias=False), x = [[0.12573242], [-0.13208008]], "
    "dy = [[0.12573022], [-0.13210486]], eps 1e-5: dx[1, 0] = -0.0009765625, expected -0.000601257 "
    "(bound with float32 arithmetic 3.1e-6, 123x exceeded)."
)

_NNX_EVIDENCE = (
    "flax v0.12.8 flax/nnx/nn/normalization.py:385 `x, mean, var, scale, bias = self.promote_dtype((x, "
    "self.mean[...], self.var[...], scale, bias), dtype=self.dtype)`: the float32 scale and bias become "
    "float16 inside the layer, so their cotangents are float16 sums (the transpose of a float16 broadcast "
    "is a float16 reduce_sum: jax.lax.reduce of 4095 ones and 2048 in float16 gives 6110, jnp.sum 6144) "
    "rounded to float16 before the cast back to float32; dx gets half-rounded path cotangents as linen's. "
    "Observed: eval backward float16, dgamma 0.01580810546875 where 0.015808562867936245 is expected "
    "(42x the bound with float32 sums)."
)


def _linen(suffix: str) -> KnownDiscrepancy:
    return KnownDiscrepancy(
        id="jax-flax-linen-half-gradient-paths-rounded" + ("-stable-variance" if suffix else ""),
        backends="flax.linen.BatchNorm" + suffix,
        dtypes=HALF,
        devices=("cpu",),
        modes=(Mode.TRAIN_BACKWARD,),
        quantities=("dx",),
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate="float32", stats="float32",
                                              variance=_VARIANCE[suffix], flush_subnormals=True),
        explanation=(
            "With a half input and float32 statistics, the training dx is the sum of cotangents that JAX "
            "rounds to the half format one path at a time (the batch-statistics path and the x - mean path), "
            "so dx is off by half-format roundings of terms of size gamma * s * |dy|, not of dx itself: "
            "within the bound of half-precision arithmetic with float32 sums."
        ),
        evidence=_LINEN_EVIDENCE,
    )


def _nnx(suffix: str) -> KnownDiscrepancy:
    return KnownDiscrepancy(
        id="jax-flax-nnx-half-gradients-summed-in-half" + ("-stable-variance" if suffix else ""),
        backends="flax.nnx.BatchNorm" + suffix,
        dtypes=HALF,
        devices=("cpu",),
        modes=BACKWARD,
        quantities=("dx", "dgamma", "dbeta"),
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate=dtype, stats=dtype,
                                              variance=_VARIANCE[suffix], flush_subnormals=True),
        explanation=(
            "nnx.BatchNorm(dtype=half) promotes its float32 scale and bias to the half format before use, so "
            "dgamma and dbeta are half-precision sums rounded to half precision, and dx adds half-rounded "
            "path cotangents: within the bound of half-precision arithmetic and half-precision sums."
        ),
        evidence=_NNX_EVIDENCE,
    )


_FAST_VARIANCE_EVIDENCE = (
    "flax v0.12.8 flax/linen/normalization.py:138-142 and flax/nnx/nn/normalization.py:118-122 (_compute_stats): "
    "`if use_fast_variance: mu, mu2 = maybe_distributed_mean(x, _abs_sq(x), mask=mask)` then `var = "
    "jnp.maximum(0.0, mu2 - _abs_sq(mu))`, in float32 for every input but float64 (force_float32_reductions). "
    "Observed: linen.BatchNorm(use_running_average=False) on float32 x[:, 0] = [3e37, -2e37, 1e37]: y[:, 0] = NaN "
    "and batch_stats var[0] = NaN (mean(x**2) and mean**2 are both Inf); use_fast_variance=False gives y[:, 0] "
    "finite and var[0] = Inf, as the spec. The battery's values near the largest float (issue 16) found it."
)


def _squares_overflow(limit: float):
    """Per channel of finite values: the sum of x**2 passes half of `limit`, where mean(x**2) is Inf and the fast
    variance mean(x**2) - mean(x)**2 is Inf - Inf = NaN (the exact variance may still be in range)."""
    def overflow(inputs) -> np.ndarray:
        rows = channels_first(np.asarray(inputs.x, dtype=np.float64), inputs.axis)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.isfinite(rows).all(axis=1) & ((rows * rows).sum(axis=1) > limit / 2)
    return overflow


def _fast_variance_overflow(lib: str, dtypes: tuple[str, ...], modes: tuple, precision=None) -> KnownDiscrepancy:
    """flax's default fast variance with squares beyond the arithmetic's range: NaN in those channels."""
    limit = float(np.finfo(np.float64 if dtypes == ("float64",) else np.float32).max)
    return KnownDiscrepancy(
        id=f"jax-flax-{lib}-fast-variance-squares-overflow" + ("-float64" if dtypes == ("float64",) else ""),
        backends=f"flax.{lib}.BatchNorm",
        dtypes=dtypes,
        modes=modes,
        when=lambda i, f=_squares_overflow(limit): bool(f(i).any()),
        unchecked=_squares_overflow(limit),
        quantities=("y", "dx", "dgamma"),
        precision=precision,
        explanation=(
            "flax's default use_fast_variance=True computes the batch variance as mean(x**2) - mean(x)**2 clamped "
            "at 0: where the squares pass the arithmetic's largest value (float32 for every input but float64) "
            "both terms are Inf and the variance is max(0, Inf - Inf) = NaN, so y, dx and dgamma of that channel "
            "are NaN where the spec's are finite (the stable variance is Inf there, 1/std 0, y = beta). Other "
            "channels are checked as declared."
        ),
        evidence=_FAST_VARIANCE_EVIDENCE,
    )


def _fast_variance_overflows() -> tuple[KnownDiscrepancy, ...]:
    """Per library: half-precision training backward (with its half-gradient precision, which the first covering
    record must carry), then float32/half and float64 training."""
    training, backward = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD), (Mode.TRAIN_BACKWARD,)
    out = []
    for lib, half in (("linen", _linen(_FAST)), ("nnx", _nnx(_FAST))):
        out.append(replace(_fast_variance_overflow(lib, HALF, backward, half.precision),
                           id=f"jax-flax-{lib}-fast-variance-squares-overflow-half-backward",
                           quantities=("dx", "dgamma")))  # a backward returns no y
        out.append(_fast_variance_overflow(lib, ("float32", *HALF), training))
        out.append(_fast_variance_overflow(lib, ("float64",), training))
    return tuple(out)


def _count_zero_with_running_stats(inputs) -> bool:
    return inputs.running is not None and inputs.running.count == 0


def _every_channel(inputs) -> np.ndarray:
    return np.ones(inputs.x.shape[inputs.axis], dtype=bool)


def _decay_rounds_to_one(dtype: str, min_count: int = 0):
    """The momentum (decay) becomes 1 in `dtype`, where the zero-debiasing divides by 1 - 1**t = 0."""
    return lambda i: (i.running is not None and i.running.count >= min_count and i.momentum is not None
                      and float(round_to(np.array(i.momentum), dtype)) == 1.0)


def _haiku_variance_may_go_negative(dtype: str):
    """Per channel: haiku's unclamped one-pass variance (in `dtype`, float32 sums for half inputs) may come out
    below -eps: its error bound reaches var + eps, or its sums overflow; rsqrt then gives NaN."""
    precision = precision_for(dtype, compute=dtype, accumulate="float32" if dtype in HALF else None,
                              stats=dtype, variance=VarianceAlgorithm.ONE_PASS, flush_subnormals=True)

    def channels(inputs) -> np.ndarray:
        stats = batch_stats(inputs.x, inputs.axis)
        err = statistics_error(inputs.x, stats, inputs.axis, precision)
        return (err.var_one_pass >= stats.var + inputs.eps) | err.overflow_one_pass

    return channels


_FLOAT16_MAX = 65504.0


def _float16_out_of_range(inputs) -> np.ndarray:
    """Per channel: a float16 sum may exceed the float16 range: the batch sums and sums of squared
    deviations, or sum(dy * z), the scale's gradient, with z from the batch or the running statistics; or
    var + eps is 0 because the batch variance is 0 and eps underflows to 0 in float16 (0 / 0 = NaN)."""
    stats = batch_stats(inputs.x, inputs.axis)
    precision = precision_for("float16", compute="float16", stats="float16", flush_subnormals=True)
    flagged = statistics_error(inputs.x, stats, inputs.axis, precision).overflow
    flagged |= (stats.var == 0) & (float(round_to(np.array(inputs.eps), "float16")) == 0.0)
    if inputs.dy is not None:
        x, dy = (channels_first(np.asarray(a, np.float64), inputs.axis) for a in (inputs.x, inputs.dy))
        pairs = [(stats.mean, stats.var)] + ([] if inputs.running is None else [(inputs.running.mean, inputs.running.var)])
        for mean, var in pairs:
            with np.errstate(all="ignore"):
                z = np.abs(x - mean[:, None]) / np.sqrt(var[:, None] + inputs.eps)
                # the backward through 1 / sqrt(var + eps) forms s**3, Inf in float16 when var + eps < 6.1e-4
                s_cubed = (var + inputs.eps) ** -1.5
            flagged |= ((np.abs(dy) * z).sum(axis=1) >= _FLOAT16_MAX / 2) | (s_cubed >= _FLOAT16_MAX / 2)
    return flagged


def _equinox_float16_unchecked(inputs) -> np.ndarray:
    """The float16 range limits, and every channel of a first step with running statistics, which the
    initial-state entry below would explain (first match wins: this entry covers both)."""
    first_step = _count_zero_with_running_stats(inputs) and inputs.dy is None
    return _float16_out_of_range(inputs) | first_step


ENTRIES: tuple[KnownDiscrepancy, ...] = (
    *_fast_variance_overflows(),  # first: where they apply, the half-gradient records' precision comes with them
    _linen(_FAST),
    _linen(_STABLE),
    *(KnownDiscrepancy(
        id="jax-flax-nnx-float16-gradient-sums-overflow" + ("-stable-variance" if suffix else ""),
        backends="flax.nnx.BatchNorm" + suffix,
        dtypes=("float16",),
        devices=("cpu",),
        modes=BACKWARD,
        when=lambda i: bool(_float16_out_of_range(i).any()),
        quantities=("dx", "dgamma", "dbeta"),
        unchecked=_float16_out_of_range,
        precision=_nnx(suffix).precision,
        explanation=(
            "nnx.BatchNorm(dtype=float16) sums the scale's and bias's gradients in float16 (see "
            "jax-flax-nnx-half-gradients-summed-in-half): where such a sum passes 65504 it is Inf although "
            "the exact value is finite. Other channels are checked against the half-precision record."
        ),
        evidence=_NNX_EVIDENCE + " Observed: eval backward float16, dgamma Inf where the oracle gives 62502.6.",
    ) for suffix in (_FAST, _STABLE)),
    _nnx(_FAST),
    _nnx(_STABLE),
    *(KnownDiscrepancy(
        id=f"jax-haiku-{dtype}-one-pass-variance-nan",
        backends="haiku.BatchNorm",
        dtypes=(dtype,),
        modes=(Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD),
        when=lambda i, f=_haiku_variance_may_go_negative(dtype): bool(f(i).any()),
        quantities=("y", "dx", "dgamma", "running_mean", "running_var"),
        # with a decay that rounds to 1 as well, the running statistics are NaN in every channel; in float16
        # the range limits of jax-haiku-float16-gradient-sums-overflow too (s**3 = (var + eps)**-1.5 is Inf
        # below var + eps = 6.1e-4), which that entry would explain but the first matching entry is this one
        unchecked=lambda i, f=_haiku_variance_may_go_negative(dtype), one=_decay_rounds_to_one(dtype), d=dtype: (
            f(i) | one(i) | (_float16_out_of_range(i) if d == "float16" else False)),
        explanation=(
            "hk.BatchNorm computes var = mean(x**2) - mean(x)**2 and does not clamp it, so where rounding "
            "makes it fall below -eps, rsqrt(var + eps) is NaN and so are y, dx and dgamma of that channel "
            "(and the running variance can go negative). Declared one-pass bounds hold on the other channels."
        ),
        evidence=(
            "dm-haiku v0.0.17 haiku/_src/batch_norm.py:181 `var = mean_of_squares - jnp.square(mean)` and "
            ":204 `inv = scale * jax.lax.rsqrt(var + eps)` (no jnp.maximum). Observed: float32, a constant "
            "channel x = 1000.1 (8 values), eps 1e-5, decay 0: running var -0.125 and y NaN where the oracle "
            "gives var 0 and y 0."
        ),
    ) for dtype in ("float64", "float32", *HALF)),
    # first match wins: haiku's one-pass entries above also cover a decay of 1 in the same case
    *(KnownDiscrepancy(
        id=f"jax-{lib}-{dtype}-decay-one",
        backends=backend,
        dtypes=(dtype,),
        modes=modes,
        when=_decay_rounds_to_one(dtype, min_count),
        quantities=quantities,
        unchecked=_every_channel,
        explanation=(
            f"{backend}'s zero-debiased average divides by 1 - decay**t, 0 when the decay rounds to 1 in "
            f"{dtype} (1 itself is outside the documented range, [0, 1) for haiku, (0, 1) for equinox): the "
            "affected quantities are NaN or Inf, where the oracle's limit is the cumulative average 1/t."
        ),
        evidence=(
            "dm-haiku v0.0.17 haiku/_src/moving_averages.py ExponentialMovingAverage.__call__ `average /= (one "
            "- jnp.power(decay, counter))`; equinox v0.13.8 equinox/nn/_batch_norm.py `scale = jnp.where(counter "
            "== 0, 1, 1 - self.momentum**counter)`. Observed: haiku float64, momentum 1.0: running_mean NaN."
        ),
    ) for dtype in ("float64", "float32", *HALF) for lib, backend, modes, min_count, quantities in (
        ("haiku", "haiku.BatchNorm", (Mode.TRAIN_FORWARD,), 0, ("running_mean", "running_var")),
        ("equinox", "equinox.nn.BatchNorm", (Mode.TRAIN_FORWARD,), 0, ("running_mean", "running_var")),
        ("equinox-eval", "equinox.nn.BatchNorm", (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD), 1, ("y", "dx", "dgamma", "dbeta")),
    )),
    KnownDiscrepancy(
        id="jax-haiku-float16-gradient-sums-overflow",
        backends="haiku.BatchNorm",
        dtypes=("float16",),
        modes=BACKWARD,
        when=lambda i: bool(_float16_out_of_range(i).any()),
        quantities=("dx", "dgamma", "dbeta"),
        unchecked=_float16_out_of_range,
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate=dtype, stats=dtype,
                                              variance=VarianceAlgorithm.ONE_PASS, flush_subnormals=True),
        explanation=(
            "hk.BatchNorm creates scale and offset in the input's dtype, so with float16 their gradients are "
            "float16 sums (the transpose of a float16 broadcast), Inf once they pass 65504 although the exact "
            "value is finite; the backward's s**3 overflows likewise. Other channels are checked as declared."
        ),
        evidence=(
            "dm-haiku v0.0.17 haiku/_src/batch_norm.py `w_dtype = inputs.dtype`, `scale = hk.get_parameter("
            "\"scale\", w_shape, w_dtype, ...)`. Observed: eval backward float16, dgamma NaN where the oracle "
            "gives -53154.5."
        ),
    ),
    KnownDiscrepancy(
        id="jax-haiku-half-gradients-summed-in-half",
        backends="haiku.BatchNorm",
        dtypes=HALF,
        modes=BACKWARD,
        quantities=("dx", "dgamma", "dbeta"),
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate=dtype, stats=dtype,
                                              variance=VarianceAlgorithm.ONE_PASS, flush_subnormals=True),
        explanation=(
            "hk.BatchNorm's forward sums half inputs in float32 (jnp.mean), as declared, but its gradients "
            "are sums in the half format: scale and offset are half-precision parameters, and the transpose "
            "of a half broadcast is a half reduce_sum. Within the bound of half-precision sums."
        ),
        evidence=(
            "dm-haiku v0.0.17 haiku/_src/batch_norm.py `w_dtype = inputs.dtype`; jax.lax.reduce of 4095 ones "
            "and 256 in bfloat16 gives 4320, not 4351. Observed: eval backward bfloat16, shape (4, 5, 2, 2), "
            "dbeta 3.27x the bound with float32 sums."
        ),
    ),
    KnownDiscrepancy(
        id="jax-equinox-float16-sums-overflow",
        backends="equinox.nn.BatchNorm",
        dtypes=("float16",),
        when=lambda i: bool(_float16_out_of_range(i).any()),
        quantities=("y", "dx", "dgamma", "dbeta", "running_mean", "running_var"),
        unchecked=_equinox_float16_unchecked,
        explanation=(
            "With a float16 input equinox adds in float16: lax.pmean over the vmapped batch axis and the "
            "gradient sums for weight and bias. Where such a sum passes 65504 it is Inf, and y, dx, dgamma "
            "come out Inf or NaN although the exact values are finite (the first-order model cannot bound "
            "an overflow); the backward forms s**3 = (var + eps)**-1.5, Inf below var + eps = 6.1e-4. eps is "
            "added in float16 too, so an eps below 3e-8 is 0 and a constant channel gives 0 / 0 = NaN. "
            "Other channels are checked as declared."
        ),
        evidence=(
            "equinox v0.13.8 equinox/nn/_batch_norm.py BatchNorm.__call__._stats: `mean = lax.pmean(mean, "
            "self.axis_name)`, `var = lax.pmean(var, self.axis_name)`; under jax.vmap, pmean is a float16 "
            "reduce_sum (jax.lax.reduce of 4095 ones and 2048 in float16 gives 6110, not 6143). Observed: "
            "eval backward float16, dgamma NaN where the oracle gives -550034 (beyond float16's 65504); train "
            "forward float16, x = [[-1.], [-1.]], eps 1e-8: y NaN where the oracle gives 0."
        ),
    ),
    KnownDiscrepancy(
        id="jax-equinox-batch-mode-debiases-from-initial-state",
        backends="equinox.nn.BatchNorm",
        modes=(Mode.TRAIN_FORWARD,),
        when=_count_zero_with_running_stats,
        quantities=("running_mean", "running_var"),
        # the record claims no model the oracle can express: (m R + (1 - m) b) / (1 - m) = b + R m / (1 - m)
        # weighs the batch by 1; tests/adapters/test_jax.py checks that formula exactly
        unchecked=_every_channel,
        explanation=(
            "equinox.nn.BatchNorm(mode='batch') keeps zero-debiasing hidden averages but reads the state as "
            "the running statistics themselves while its counter is 0 (inference divides by 1 only then), "
            "and starts from hidden = (0, 1). The first training step therefore gives (m R + (1 - m) b) / "
            "(1 - m) = b + R m / (1 - m) instead of the batch statistic b: from the layer's own initial state "
            "the running variance is var + m / (1 - m) (var + 99 at the default m = 0.99); the mean is right "
            "only because it starts at 0."
        ),
        evidence=(
            "equinox v0.13.8 equinox/nn/_batch_norm.py, BatchNorm.__init__: `init_hidden = (jnp.zeros(...), "
            "jnp.ones(...))`; __call__: `scale = jnp.where(counter == 0, 1, 1 - self.momentum**counter)` and "
            "`new_hidden_var = hidden_var * self.momentum + var * (1 - self.momentum)`. Minimal: "
            "make_with_state(BatchNorm)(1, 'batch', momentum=0.9, mode='batch'), x = [[1.], [-1.]] (var 1), one "
            "training call, then inference reads var = (0.9 + 0.1) / 0.1 = 10, expected 1."
        ),
    ),
)
