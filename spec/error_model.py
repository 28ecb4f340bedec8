"""How far a correct float64/32/16/bfloat16 batch norm may be from the float64 oracle, element by element.

First-order rounding-error bounds (derivation in SPEC.md, "The error model"). Per channel, with n values,
u_c the unit roundoff of the compute format, u_a that of the accumulator, f(n) the summation's error
factor (n - 1 recursive, ceil(log2 n) pairwise, see `Summation`) and g = f(n) u_a + u_c:

    d_mean        = (g + 2 u_c) * mean|x|
    d_var  (2-pass) = (g + 4 u_c) * (var + d_mean**2) + d_mean**2
    d_var (Welford) = (g + 4 u_c) * var + g * sqrt(var * (var + mean**2)) + d_mean**2
    d_var (1-pass)  = (g + 2 u_c) * (var + mean**2) + 2 |mean| d_mean + d_mean**2 + u_c * var

The one-pass E[x^2] - E[x]^2 bound loses u * (mean/std)**2 relative accuracy; the stable ones do not.
Every per-element bound below follows from these by first-order propagation; a channel where the relative
error bound of var + eps reaches 1/4, or whose intermediate sums overflow the compute or accumulator format,
is *ill-conditioned*: no first-order bound holds there, and comparisons say so instead of widening, with the
reason (`IllConditioning.reason`: which intermediate overflows which format, or that relative error and what
drives it: |mean|/std and n, a constant channel against eps, or a given variance).
"""

from dataclasses import dataclass, field, replace
from functools import partial
from enum import Enum

import numpy as np

from .conventions import Convention
from .formats import FloatFormat, float_format, wider
from .oracle import (
    BatchStats,
    RunningStats,
    broadcast,
    channels_first,
    effective_eps,
    inverse_std,
    inverse_std_derivative,
    update_weight,
    variance_factor,
)


@dataclass(frozen=True)
class Summation:
    """How a reduction orders its additions: runs of `block` terms added one after another, the runs
    then combined as a balanced tree. Its error factor is f(n) = (block - 1) + ceil(log2(n / block)),
    or n - 1 for one single run (`block` None, recursive summation, valid for any order). `combine`: partial
    results added one after another after the reduction (W - 1 for the per-replica partials of a
    data-parallel reduction, SPEC.md section 6.3); each adds one rounding to f."""

    block: int | None = None
    combine: int = 0

    def factor(self, n: int) -> float:
        """f(n): a sum of n terms in format u is off by at most f(n) * u * sum|terms| (first order)."""
        if n <= 1:
            return float(self.combine)
        if self.block is None or n <= self.block:
            return float(n - 1 + self.combine)
        return float(self.block - 1 + np.ceil(np.log2(np.ceil(n / self.block))) + self.combine)


RECURSIVE = Summation(None)
PAIRWISE = Summation(1)
# NumPy's pairwise sum of a contiguous row: 8 interleaved accumulators over blocks of 128, leftovers
# added in sequence, blocks combined pairwise; runs of 32 bound it with room to spare.
NUMPY_PAIRWISE = Summation(32)


class VarianceAlgorithm(Enum):
    """The batch-variance algorithm an implementation declares: a stable one, or the one-pass formula where
    that is the API's own algorithm (its bound loses u * (mean/std)**2; see statistics_error)."""

    TWO_PASS = "two_pass"  # mean first, then sum((x - mean)**2)
    WELFORD = "welford"  # running (mean, M2) updates and Chan's pairwise merge
    ONE_PASS = "one_pass"  # E[x^2] - E[x]^2: not stable, declared only by an API whose documented algorithm it is


@dataclass(frozen=True)
class Precision:
    """How an implementation rounds.

    `dtype` is the format of x, y, dy and dx; `compute` the format of its elementwise arithmetic and
    statistics; `accumulate` the format of its reduction accumulators; `stats` the format it holds gamma,
    beta and the running statistics in and returns running statistics, saved statistics, dgamma and dbeta in
    (in a mixed layout such as float16 data with float32 parameters, the parameter format: see
    `with_parameters`). `flush_subnormals`: the arithmetic flushes subnormal inputs and results to zero
    (FTZ/DAZ, as TensorFlow's CPU runtime sets for every kernel), so an underflow costs up to the smallest
    normal number instead of half the smallest subnormal. `attributes`: the format eps and momentum are
    held in and rounded to before any use (ONNX's 32-bit float attributes, Paddle's float32 kernel
    arguments, for float64 data too); None: they are used exactly as given.
    """

    dtype: str
    compute: str
    accumulate: str
    stats: str
    summation: Summation = RECURSIVE
    variance: VarianceAlgorithm = VarianceAlgorithm.TWO_PASS
    flush_subnormals: bool = False
    attributes: str | None = None

    def attribute(self, value: float | None) -> float | None:
        """eps or momentum as the implementation holds it: rounded to `attributes` (None stays None)."""
        if value is None or self.attributes is None:
            return value
        return round_to_format(value, self.attributes)


def round_to_format(value: float, fmt) -> float:
    """`value` rounded to nearest (ties to even) in the format `fmt`, gradual underflow and overflow to
    infinity included; by the format's parameters alone, so bfloat16 needs no ml_dtypes."""
    f = float_format(fmt)
    v = float(value)
    if not np.isfinite(v) or v == 0.0:
        return v
    _, exponent = np.frexp(abs(v))  # |v| = m * 2**exponent, m in [0.5, 1)
    quantum = float(np.ldexp(1.0, max(int(exponent) - 1, f.min_exponent) - f.precision + 1))
    rounded = float(np.rint(v / quantum)) * quantum  # exact scalings by powers of two; rint ties to even
    return float(np.copysign(np.inf, v)) if abs(rounded) > f.max_value else rounded


LAYOUT_SEPARATOR = "/"


def layout_name(dtype: str, param_dtype: str | None = None) -> str:
    """A cell's dtype as reports show it: "float16" (the parameters in the backend's own format) or
    "float16/float32" (float16 x, y, dy, dx; gamma, beta, running statistics and their gradients float32)."""
    return dtype if param_dtype is None else f"{dtype}{LAYOUT_SEPARATOR}{param_dtype}"


def split_layout(name: str) -> tuple[str, str | None]:
    """(data dtype, parameter dtype or None) of a layout name from `layout_name`: a plain dtype name is returned
    as it is; either half of a mixed layout that is not a format bnconf knows is an InputError."""
    if not isinstance(name, str) or LAYOUT_SEPARATOR not in name:
        return name, None
    dtype, _, param_dtype = name.partition(LAYOUT_SEPARATOR)
    return float_format(dtype).name, float_format(param_dtype).name


def with_parameters(p: "Precision", param_dtype: str | None) -> "Precision":
    """The precision of a mixed layout: `p` with gamma, beta, the running statistics and the statistics and
    gradients returned held in `param_dtype` (its `stats`); `p` itself for None."""
    return p if param_dtype is None else replace(p, stats=float_format(param_dtype).name)


def precision_for(
    dtype,
    *,
    compute=None,
    accumulate=None,
    stats=None,
    summation: Summation = RECURSIVE,
    variance: VarianceAlgorithm = VarianceAlgorithm.TWO_PASS,
    flush_subnormals: bool = False,
    attributes=None,
) -> Precision:
    """The usual precision for `dtype` inputs: float16/bfloat16 computed in float32, others in their own format.

    The default summation is RECURSIVE, whose bound holds for any order of additions; an
    implementation known to reduce by a tree declares its `Summation` for a tighter bound.
    `attributes` (e.g. "float32"): the format eps and momentum are rounded to before use; None: exact.
    """
    fmt = float_format(dtype)
    compute = float_format(compute) if compute is not None else wider(fmt, float_format("float32"))
    accumulate = float_format(accumulate) if accumulate is not None else compute
    stats = float_format(stats) if stats is not None else compute
    attributes = float_format(attributes).name if attributes is not None else None
    return Precision(fmt.name, compute.name, accumulate.name, stats.name, summation, variance, flush_subnormals,
                     attributes)


# The oracle's own rounding: float64, NumPy's pairwise sums over contiguous rows.
ORACLE_PRECISION = precision_for("float64", summation=NUMPY_PAIRWISE)


PROBE_ROUNDINGS = 16  # roundings between a designed probe's exact inputs and the quantity measured from its outputs


def probe_tolerance(fmt: str, conditioning: float = 1.0, roundings: int = PROBE_ROUNDINGS) -> float:
    """The relative residual a correct implementation may show on a designed probe (convention inference):
    exactly representable inputs, reductions of a few values, `roundings` roundings in format `fmt` each off by
    at most its unit roundoff u, amplified by the measurement's `conditioning` (e.g. |old| / |batch - old| for
    a momentum weight read from (new - old) / (batch - old)):  roundings * conditioning * u."""
    return roundings * conditioning * float_format(fmt).unit_roundoff


@dataclass(frozen=True)
class _Roundoff:
    """The unit roundoffs of one precision, and g = f(n) u_a + u_c for its reductions of length n."""

    compute: float
    out: float
    stats: float
    reduction: float
    tiny_out: float
    tiny_stats: float
    tiny_compute: float
    compute_max: float
    accumulate_max: float

    def underflow(self, factors) -> np.ndarray:
        """Absolute slack for gradual underflow: a coefficient that underflows (gamma * s, say) is off by
        up to half the smallest subnormal, then multiplied by `factors` (the magnitudes it later scales);
        the result is rounded to the output format once more."""
        return self.tiny_out + 4 * self.tiny_compute * (1 + factors)

    @classmethod
    def of(cls, p: Precision, n: int) -> "_Roundoff":
        c, a, o, s = (float_format(name) for name in (p.compute, p.accumulate, p.dtype, p.stats))
        # flush-to-zero: a result below the smallest normal becomes 0, off by up to that normal number
        tiny = (lambda f: 2.0**f.min_exponent) if p.flush_subnormals else (lambda f: f.smallest_subnormal)  # noqa: E731
        return cls(
            compute=c.unit_roundoff,
            out=o.unit_roundoff,
            stats=s.unit_roundoff,
            reduction=p.summation.factor(n) * a.unit_roundoff + c.unit_roundoff,
            tiny_out=tiny(o),
            tiny_stats=tiny(s),
            tiny_compute=tiny(c),
            compute_max=c.max_value,
            accumulate_max=a.max_value,
        )


@dataclass(frozen=True)
class StatisticsError:
    """Per-channel bounds on the computed batch statistics, under the stable and the one-pass algorithm."""

    mean: np.ndarray
    var: np.ndarray
    var_one_pass: np.ndarray
    overflow: np.ndarray  # bool: an intermediate of the stable algorithm exceeds its format
    overflow_one_pass: np.ndarray
    intermediates: tuple["Intermediate", ...] = ()  # those the overflow checks look at, stable algorithm
    intermediates_one_pass: tuple["Intermediate", ...] = ()


@dataclass(frozen=True)
class Intermediate:
    """One intermediate of a statistics algorithm: its size per channel and the format it must fit in."""

    name: str
    size: np.ndarray
    fmt: str
    limit: float  # the format's largest finite value

    def overflows(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.size > self.limit


def _overflows(intermediates: tuple[Intermediate, ...]) -> np.ndarray:
    """Per channel: some intermediate exceeds its format."""
    return np.logical_or.reduce([i.overflows() for i in intermediates])


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def statistics_error(x: np.ndarray, stats: BatchStats, axis: int, p: Precision) -> StatisticsError:
    """Bounds on |computed - exact| for the batch mean and (biased) variance, per channel."""
    rows = channels_first(x, axis)
    r = _Roundoff.of(p, stats.count)
    n, mu, var = stats.count, np.abs(stats.mean), stats.var
    mean_abs = np.abs(rows).mean(axis=1) if rows.size else np.full(len(var), np.nan)  # empty batch: undefined
    d_mean = (r.reduction + 2 * r.compute) * mean_abs
    # squares and their mean may underflow: half the smallest subnormal each, a few times over
    tiny = 4 * r.tiny_compute
    if p.variance is VarianceAlgorithm.TWO_PASS:
        d_var = (r.reduction + 4 * r.compute) * (var + d_mean**2) + d_mean**2 + tiny
    else:
        d_var = (r.reduction + 4 * r.compute) * var + r.reduction * np.sqrt(var * (var + mu**2)) + d_mean**2 + tiny
    d_var_one_pass = (r.reduction + 2 * r.compute) * (var + mu**2) + 2 * mu * d_mean + d_mean**2 + r.compute * var + tiny
    max_sq_dev = (np.abs(rows - stats.mean[:, None]).max(axis=1) if rows.size else np.zeros(len(var))) ** 2
    max_sq = (np.abs(rows).max(axis=1) if rows.size else np.zeros(len(var))) ** 2
    total = Intermediate("sum |x|", n * mean_abs, p.accumulate, r.accumulate_max)  # NaN (empty batch): no overflow
    stable = (total, Intermediate("(x - mean)^2", max_sq_dev, p.compute, r.compute_max),
              Intermediate("n var", n * (var + d_mean**2), p.accumulate, r.accumulate_max))
    one_pass = (total, Intermediate("x^2", max_sq, p.compute, r.compute_max),
                Intermediate("n (var + mean^2)", n * (var + mu**2), p.accumulate, r.accumulate_max))
    if p.variance is VarianceAlgorithm.ONE_PASS:  # declared: the one-pass bound is the model itself
        d_var, stable = d_var_one_pass, one_pass
    return StatisticsError(d_mean, d_var, d_var_one_pass, _overflows(stable), _overflows(one_pass), stable, one_pass)


@dataclass(frozen=True)
class _Normalizer:
    """The inverse standard deviation s a forward normalizes with, and a bound on its error."""

    s: np.ndarray
    d_s: np.ndarray
    d_var: np.ndarray  # bound on the error of the variance s is computed from
    ill: np.ndarray  # first-order model invalid: relative variance error >= 1/4, or overflow
    relative: np.ndarray  # delta(var + eps) / (var + eps), the relative error bound of var + eps as computed


def _normalizer(var, d_var, overflow, eps: float, convention: Convention, r: _Roundoff) -> _Normalizer:
    """s = s(var) with `var` known to within d_var; eps enters in the compute format."""
    s = inverse_std(var, eps, convention.eps_placement)
    slope = np.abs(inverse_std_derivative(var, eps, convention.eps_placement))
    # var + eps as computed: its error, the rounding of eps and of the sum, and gradual underflow
    d_sum = d_var + r.compute * (var + eps) + r.compute * eps + 4 * r.tiny_compute
    relative = d_sum / (var + eps)
    # first order times (1 + 2 relative) covers (1 - relative)**-1/2 - 1 while relative < 1/4
    d_s = slope * d_sum * (1 + 2 * relative) + 3 * r.compute * s
    ill = overflow | ~np.isfinite(d_s) | ~(relative < 0.25)
    return _Normalizer(s, np.where(np.isfinite(d_s), d_s, np.inf), d_var, ill, relative)


@dataclass(frozen=True)
class IllConditioning:
    """Per channel, the numbers behind section 4.8's conditions, to say why a channel has no first-order bound.

    Worded only when asked (`reason`): most channels have a bound, and this is built for every example."""

    relative: np.ndarray  # delta(var + eps) / (var + eps): the expansion of s(var) needs < 1/4
    intermediates: tuple[Intermediate, ...]  # whose overflow leaves no bound (none in eval: nothing is summed)
    mean: np.ndarray  # the mean and variance normalized with (the batch's, or the running ones in eval)
    var: np.ndarray
    eps: float
    count: int | None  # values per channel; None where the variance is given (eval), not computed
    compute: str  # the compute format
    x: np.ndarray = field(repr=False)  # to tell a constant channel
    axis: int = 1

    def severity(self) -> np.ndarray:
        """How far each channel is from a bound: infinite where an intermediate overflows or `relative` is NaN."""
        over = _overflows(self.intermediates) if self.intermediates else False
        return np.where(over | np.isnan(self.relative), np.inf, self.relative)

    def reason(self, channel: int) -> str:
        """Why `channel` has no bound: the intermediate that overflows which format, or how large the relative
        error bound of var + eps is and what drives it (|mean|/std and n, a constant channel, the given var)."""
        c = int(channel)
        for i in self.intermediates:
            if i.overflows()[c]:
                return f"{i.name} = {float(i.size[c]):.3g} overflows {i.fmt} (largest {i.limit:.3g})"
        total = float(self.var[c]) + self.eps
        if not total > 0:
            return f"var + eps = {total:.3g}: 1/sqrt(var + eps) is not finite"
        return f"error bound of var + eps {float(self.relative[c]):.2g} times itself (>= 0.25): {self._driver(c)}"

    def _driver(self, c: int) -> str:
        """The number behind a large relative error of var + eps."""
        m, v, e = abs(float(self.mean[c])), float(self.var[c]), self.eps
        if self.count is None:
            return f"given var = {v:.3g}, eps = {e:.3g}, {self.compute} arithmetic"
        if v == 0 or self._constant(c):
            return f"constant channel, |mean| = {m:.3g}, eps = {e:.3g}, n = {self.count}, {self.compute} arithmetic"
        return f"|mean|/std = {m / np.sqrt(v):.3g}, n = {self.count}, eps = {e:.3g}, {self.compute} arithmetic"

    def _constant(self, c: int) -> bool:
        row = np.take(np.asarray(self.x), c, axis=self.axis)
        return row.size > 0 and bool(np.all(row == row.flat[0]))


def _normalized_error(x, mean, d_mean, norm: _Normalizer, axis: int, r: _Roundoff) -> tuple[np.ndarray, np.ndarray]:
    """(z, bound on its error) for z = (x - mean) * s, direct or folded as x * s - mean * s.

    The last term is absolute: x and the mean in the subnormal range are off by up to tiny_c before s scales them
    (read as zero under flush-to-zero, or a mean of subnormals rounded to the subnormal spacing)."""
    b = partial(broadcast, ndim=x.ndim, axis=axis)
    z = (x - b(mean)) * b(norm.s)
    d_z = (
        b(norm.s * d_mean)
        + np.abs(x - b(mean)) * b(norm.d_s)
        + 3 * r.compute * np.abs(z)
        + 2 * r.compute * b(norm.s) * (np.abs(x) + b(np.abs(mean)))
        + 2 * r.tiny_compute * b(norm.s)
    )
    return z, d_z


def _affine_output_error(z, d_z, gamma, beta, y, scaled, axis: int, r: _Roundoff) -> np.ndarray:
    """Bound on the error of y = gamma * z + beta rounded to the output format; `scaled` is |x| + |mean|,
    what a folded coefficient gamma * s multiplies."""
    b = partial(broadcast, ndim=z.ndim, axis=axis)
    return (
        b(np.abs(gamma)) * d_z
        + 2 * r.compute * (np.abs(b(gamma) * z) + b(np.abs(beta)))
        + r.out * np.abs(y)
        + r.underflow(scaled)
    )


def _scaled(x, mean, axis: int) -> np.ndarray:
    return np.abs(x) + broadcast(np.abs(mean), x.ndim, axis)


def _stored(value, error, r: _Roundoff) -> np.ndarray:
    """Add the rounding of a statistic to the format it is returned in."""
    return error + r.stats * np.abs(value) + r.tiny_stats + 8 * r.tiny_compute


def _running_error(old, old_error, batch, batch_error, w: float, new, r: _Roundoff) -> np.ndarray:
    """Bound for new = (1 - w) * old + w * batch, given bounds on old and batch.

    The momentum itself is rounded to the compute format, which moves w and 1 - w by u * max(|w|, |1 - w|).
    """
    arithmetic = 4 * r.compute * (np.abs((1 - w) * old) + np.abs(w * batch))
    momentum_rounding = 2 * r.compute * max(abs(w), abs(1 - w)) * (np.abs(old) + np.abs(batch))
    return _stored(new, abs(1 - w) * old_error + abs(w) * batch_error + arithmetic + momentum_rounding, r)


@dataclass(frozen=True)
class Bounds:
    """Per-element bounds for every quantity of a mode, and where no bound holds (ill-conditioned)."""

    bounds: dict[str, np.ndarray]
    ill: dict[str, np.ndarray]
    why: IllConditioning | None = None  # per channel, why an ill-conditioned one has no bound


def _ill_per_element(ill_channels: np.ndarray, shape, axis: int) -> np.ndarray:
    return np.broadcast_to(broadcast(ill_channels, len(shape), axis), shape)


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def train_bounds(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    stats: BatchStats,
    oracle_out,
    running: RunningStats | None,
    running_error: RunningStats | None,
    dy: np.ndarray | None,
    *,
    convention: Convention,
    axis: int,
    eps: float,
    momentum,
    precision: Precision,
    one_pass: bool = False,
) -> Bounds:
    """Bounds for the training forward (and backward, when dy is given) of a correct implementation.

    `one_pass` selects the E[x^2] - E[x]^2 variance model instead of the declared stable algorithm.
    `running_error` bounds the error already present in the running statistics the step starts from.
    """
    n = stats.count
    r = _Roundoff.of(precision, n)
    err = statistics_error(x, stats, axis, precision)
    d_var_b = err.var_one_pass if one_pass else err.var
    overflow = err.overflow_one_pass if one_pass else err.overflow
    k = variance_factor(convention.normalize_with, n, convention.bessel_divisor_min)
    var = oracle_out.saved_var
    e = effective_eps(convention, eps)
    norm = _normalizer(var, k * d_var_b + 2 * r.compute * var, overflow, e, convention, r)
    why = IllConditioning(norm.relative, err.intermediates_one_pass if one_pass else err.intermediates, stats.mean,
                          var, e, n, precision.compute, x, axis)
    z, d_z = _normalized_error(x, stats.mean, err.mean, norm, axis, r)
    bounds = {
        "y": _affine_output_error(z, d_z, gamma, beta, oracle_out.y, _scaled(x, stats.mean, axis), axis, r),
        "saved_mean": _stored(stats.mean, err.mean, r),
        "saved_var": _stored(var, norm.d_var, r),
        "saved_invstd": _stored(norm.s, norm.d_s, r),
    }
    # The variance bounds hold however large they are; s, y and the gradients need d_var < (var + eps) / 2.
    no_ill = np.zeros_like(norm.ill)
    ill = {"saved_mean": no_ill, "saved_var": overflow, "saved_invstd": norm.ill}
    ill["y"] = _ill_per_element(norm.ill, x.shape, axis)
    if running is not None:
        w = update_weight(convention, momentum, running.count + 1)
        c = variance_factor(convention.running_var, n, convention.bessel_divisor_min)
        batch_var = c * stats.var
        old_err = running_error or RunningStats(np.zeros_like(running.mean), np.zeros_like(running.var))
        new = oracle_out.running
        bounds["running_mean"] = _running_error(running.mean, old_err.mean, stats.mean, err.mean, w, new.mean, r)
        bounds["running_var"] = _running_error(
            running.var, old_err.var, batch_var, c * d_var_b + 2 * r.compute * np.abs(batch_var), w, new.var, r
        )
        if convention.zero_debias:
            # hidden-state implementations divide by 1 - d**t, which loses t d**t / (1 - d**t) units of u
            t = running.count + 1
            w0 = update_weight(replace(convention, zero_debias=False), momentum, t)  # 1 - decay
            debias = r.compute * t * (1 - w0) ** t / -np.expm1(t * np.log1p(-w0)) if w0 > 0 else r.compute * t
            bounds["running_mean"] = bounds["running_mean"] + debias * np.abs(new.mean)
            bounds["running_var"] = bounds["running_var"] + debias * np.abs(new.var)
        ill.update(running_mean=no_ill, running_var=overflow)
    if dy is not None:
        bounds.update(_train_backward_bounds(dy, gamma, z, d_z, norm, axis, r))
        ill.update(dx=ill["y"], dgamma=norm.ill, dbeta=no_ill)
    return Bounds(bounds, ill, why)


def _train_backward_bounds(dy, gamma, z, d_z, norm: _Normalizer, axis: int, r: _Roundoff) -> dict[str, np.ndarray]:
    """Bounds for dx = gamma s (dy - mean(dy) - z mean(dy z)), dgamma = sum(dy z), dbeta = sum(dy).

    Bounds are on magnitudes of the terms, never relative to dx, which cancels to ~0 when dy is
    constant or proportional to z.
    """
    b, rows = partial(broadcast, ndim=dy.ndim, axis=axis), partial(channels_first, axis=axis)
    g, gz = rows(dy), rows(dy * z)
    if g.shape[1] == 0:  # an empty batch: dx is empty, dgamma and dbeta are exact empty sums
        return {"dx": np.zeros(dy.shape), **_parameter_gradient_bounds(g, gz, rows(d_z), r)}
    mean_g, mean_gz = g.mean(axis=1), gz.mean(axis=1)
    d_mean_g = (r.reduction + r.compute) * np.abs(g).mean(axis=1)
    d_mean_gz = (r.reduction + 2 * r.compute) * np.abs(gz).mean(axis=1) + (np.abs(g) * rows(d_z)).mean(axis=1)
    dx = b(gamma * norm.s) * (dy - b(mean_g) - z * b(mean_gz))
    d_dx = (
        b(np.abs(gamma) * norm.s)
        * (
            b(d_mean_g)
            + np.abs(z) * b(d_mean_gz)
            + d_z * b(np.abs(mean_gz) + d_mean_gz)  # the last: second order, large where z ~ 0 and s is big
            + 3 * r.compute * (np.abs(dy) + b(np.abs(mean_g)) + np.abs(z * b(mean_gz)))
        )
        + np.abs(dx) * b(norm.d_s / norm.s + 2 * r.compute)
        + r.out * np.abs(dx)
        # an underflowing coefficient: gamma s, scaling the dy terms; or gamma dy (the chain rule's d(z), what
        # autodiff forms first), off by a tiny per element and then scaled by s (e - mean(e) - z mean(e z))
        + r.underflow(np.abs(dy) + b(np.abs(mean_g)) + np.abs(z * b(mean_gz)) + np.abs(z / b(norm.s))
                      + b(norm.s) * (2 + np.abs(z)))
    )
    return {"dx": d_dx, **_parameter_gradient_bounds(g, gz, rows(d_z), r)}


def _parameter_gradient_bounds(g, gz, d_z, r: _Roundoff) -> dict[str, np.ndarray]:
    """dgamma = sum(dy z) and dbeta = sum(dy) per channel, from rows of dy, dy z and the bound on z."""
    d_dgamma = (r.reduction + r.compute) * np.abs(gz).sum(axis=1) + (np.abs(g) * d_z).sum(axis=1)
    return {
        "dgamma": _stored(gz.sum(axis=1), d_dgamma, r),
        "dbeta": _stored(g.sum(axis=1), r.reduction * np.abs(g).sum(axis=1), r),
    }


@np.errstate(all="ignore")  # NaN and Inf propagate by design; comparisons report them
def eval_bounds(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    running: RunningStats,
    y: np.ndarray,
    dy: np.ndarray | None,
    *,
    convention: Convention,
    axis: int,
    eps: float,
    precision: Precision,
) -> Bounds:
    """Bounds for the eval forward y = gamma (x - running.mean) s(running.var) + beta and its gradients.

    The running statistics are exact inputs here; only the elementwise arithmetic rounds.
    """
    r = _Roundoff.of(precision, int(np.prod(x.shape)) // x.shape[axis])
    e = effective_eps(convention, eps)
    no_overflow = np.zeros(len(running.var), dtype=bool)
    norm = _normalizer(running.var, np.zeros_like(running.var), no_overflow, e, convention, r)
    why = IllConditioning(norm.relative, (), running.mean, running.var, e, None, precision.compute, x, axis)
    z, d_z = _normalized_error(x, running.mean, np.zeros_like(running.mean), norm, axis, r)
    bounds = {"y": _affine_output_error(z, d_z, gamma, beta, y, _scaled(x, running.mean, axis), axis, r)}
    ill = {"y": _ill_per_element(norm.ill, x.shape, axis)}
    if dy is not None:
        b, rows = partial(broadcast, ndim=x.ndim, axis=axis), partial(channels_first, axis=axis)
        dx = dy * b(gamma * norm.s)
        bounds["dx"] = np.abs(dy * b(gamma)) * b(norm.d_s) + (2 * r.compute + r.out) * np.abs(dx) + r.underflow(np.abs(dy))
        bounds.update(_parameter_gradient_bounds(rows(dy), rows(dy * z), rows(d_z), r))
        ill.update(dx=ill["y"], dgamma=norm.ill, dbeta=np.zeros_like(norm.ill))
    return Bounds(bounds, ill, why)
