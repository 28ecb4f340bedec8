"""An independent, deliberately plain reference for batch normalization, to test the oracle against.

Nothing here imports bnconf. Per channel c (every axis but `axis` reduced, n values):
    mean = sum(x) / n,   var = sum((x - mean)**2) / n,   var_unbiased = sum((x - mean)**2) / (n - 1)
    y = gamma * (x - mean) / sqrt(V + eps) + beta        (eps inside the root; V = var or var_unbiased)
    y = gamma * (x - mean) / (sqrt(V) + eps) + beta      (eps outside the root)
Means and variances are exact rationals (`fractions.Fraction` of the float64 inputs). The square root and
what follows it are evaluated with mpmath at 60 significant digits (`HP`): within about 1e-59 relative of
the real number, 43 decimal orders below a float64 ulp. `hp_*` repeat the forward in a context of any
precision on inputs that may be perturbed (finite differences use `FD`, 80 digits). The code loops over
channels and over each channel's values on purpose: it should read like the formulas above, not like the
vectorized oracle.

The second half bounds how far a float64 evaluation of these formulas may be from the exact values: the
tolerances of the oracle's tests. It uses the standard model of floating-point arithmetic (Higham,
Accuracy and Stability of Numerical Algorithms, 2nd ed., sections 2.2 and 4.2), u = 2**-53:
    fl(a op b) = (a op b)(1 + d) + e,   |d| <= u,   |e| <= 2**-1075 (underflow; 0 for + and -)
    |fl(x_1 + ... + x_n) - sum x_i| <= gamma(n - 1) * sum |x_i|   for any order of the additions,
    gamma(k) = k u / (1 - k u).
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import mpmath
import numpy as np

HP = mpmath.MPContext()
HP.dps = 60
FD = mpmath.MPContext()
FD.dps = 80


def hp(q, ctx=HP):
    """A Fraction, int, float or mpf as a number of `ctx` (exact for floats; 60 or 80 digits otherwise)."""
    if isinstance(q, Fraction):
        return ctx.mpf(q.numerator) / q.denominator
    return ctx.mpf(q)


# ---------------------------------------------------------------- layout


def channel_indices(shape, axis: int) -> list[list[int]]:
    """For each channel, the flat (C-order) positions of its values in an array of `shape`."""
    axis = axis % len(shape)
    positions = np.arange(int(np.prod(shape))).reshape(shape)
    return [np.take(positions, c, axis=axis).ravel().tolist() for c in range(shape[axis])]


def per_channel(v, channels: int, identity: float) -> list[float]:
    """gamma or beta as a list of floats; None (no affine parameter) is the identity value."""
    if v is None:
        return [identity] * channels
    return [float(a) for a in np.asarray(v, dtype=np.float64).ravel()]


# ---------------------------------------------------------------- exact statistics


@dataclass(frozen=True)
class ExactStats:
    """One channel's statistics, exactly."""

    n: int
    mean: Fraction
    sum_sq: Fraction  # S = sum((x - mean)**2)
    abs_mean: Fraction  # sum|x| / n: the scale of the mean's summation error
    abs_dev: Fraction  # sum|x - mean| / n

    @property
    def var(self) -> Fraction:
        return self.sum_sq / self.n

    @property
    def var_unbiased(self) -> Fraction | None:
        return self.sum_sq / (self.n - 1) if self.n > 1 else None

    def variance(self, unbiased: bool) -> Fraction:
        if not unbiased:
            return self.var
        if self.n < 2:
            raise ValueError("the unbiased variance needs at least two values per channel")
        return self.var_unbiased


def channel_stats(values: list[float]) -> ExactStats:
    """Mean and sum of squared deviations of one channel's values, as exact rationals."""
    exact = [Fraction(v) for v in values]
    n = len(exact)
    mean = sum(exact, Fraction(0)) / n
    sum_sq = sum(((v - mean) ** 2 for v in exact), Fraction(0))
    abs_mean = sum((abs(v) for v in exact), Fraction(0)) / n
    abs_dev = sum((abs(v - mean) for v in exact), Fraction(0)) / n
    return ExactStats(n, mean, sum_sq, abs_mean, abs_dev)


def channel_values(x, axis: int) -> list[list[float]]:
    """x's values, channel by channel, as Python floats."""
    x = np.asarray(x, dtype=np.float64)
    flat = x.ravel()
    return [[float(flat[i]) for i in idx] for idx in channel_indices(x.shape, axis)]


def batch_stats(x, axis: int) -> list[ExactStats]:
    """Exact statistics of every channel of the float64 array x (channel axis `axis`)."""
    return [channel_stats(values) for values in channel_values(x, axis)]


# ---------------------------------------------------------------- exact forward


def inverse_std(var, eps, eps_outside: bool = False, ctx=HP):
    """s = 1 / sqrt(var + eps), or 1 / (sqrt(var) + eps) with eps outside the root."""
    v, e = hp(var, ctx), hp(eps, ctx)
    return 1 / (ctx.sqrt(v) + e) if eps_outside else 1 / ctx.sqrt(v + e)


def _train_inputs(x, gamma, beta, axis: int):
    """x as float64, its flat values, exact per-channel statistics, and gamma and beta as lists."""
    x = np.asarray(x, dtype=np.float64)
    stats = batch_stats(x, axis)
    return x, x.ravel(), stats, per_channel(gamma, len(stats), 1.0), per_channel(beta, len(stats), 0.0)


def train_forward(x, gamma=None, beta=None, *, axis: int, eps: float, eps_outside=False, unbiased=False):
    """Training-mode y (normalized with the batch's own statistics) as an object array of HP numbers."""
    x, flat, stats, g, b = _train_inputs(x, gamma, beta, axis)
    y = np.empty(x.size, dtype=object)
    for c, idx in enumerate(channel_indices(x.shape, axis)):
        s = inverse_std(stats[c].variance(unbiased), eps, eps_outside)
        for i in idx:
            y[i] = hp(g[c]) * hp(Fraction(float(flat[i])) - stats[c].mean) * s + hp(b[c])
    return y.reshape(x.shape)


def _eval_inputs(x, gamma, beta, running_mean, running_var, axis: int):
    """x as float64, its flat values, per-channel positions, and the per-channel parameters as lists."""
    x = np.asarray(x, dtype=np.float64)
    idxs = channel_indices(x.shape, axis)
    g, b = per_channel(gamma, len(idxs), 1.0), per_channel(beta, len(idxs), 0.0)
    rm, rv = per_channel(running_mean, len(idxs), 0.0), per_channel(running_var, len(idxs), 1.0)
    return x, x.ravel(), idxs, g, b, rm, rv


def eval_forward(x, gamma, beta, running_mean, running_var, *, axis: int, eps: float, eps_outside=False):
    """Eval-mode y (normalized with the given running statistics) as an object array of HP numbers."""
    x, flat, idxs, g, b, rm, rv = _eval_inputs(x, gamma, beta, running_mean, running_var, axis)
    y = np.empty(x.size, dtype=object)
    for c, idx in enumerate(idxs):
        s = inverse_std(rv[c], eps, eps_outside)
        for i in idx:
            y[i] = hp(g[c]) * hp(Fraction(float(flat[i])) - Fraction(rm[c])) * s + hp(b[c])
    return y.reshape(x.shape)


# ---------------------------------------------------------------- high-precision forward, for finite differences


def hp_train_channel(values, g, b, *, eps, eps_outside=False, unbiased=False, ctx=FD) -> list:
    """One channel's training-mode y, everything in `ctx` (values, g, b may be perturbed ctx numbers)."""
    values = [hp(v, ctx) for v in values]
    n = len(values)
    mean = ctx.fsum(values) / n
    sum_sq = ctx.fsum((v - mean) ** 2 for v in values)
    var = sum_sq / (n - 1) if unbiased else sum_sq / n
    s = inverse_std(var, eps, eps_outside, ctx)
    g, b = hp(g, ctx), hp(b, ctx)
    return [g * (v - mean) * s + b for v in values]


def hp_eval_channel(values, g, b, running_mean, running_var, *, eps, eps_outside=False, ctx=FD) -> list:
    """One channel's eval-mode y, everything in `ctx`."""
    s = inverse_std(running_var, eps, eps_outside, ctx)
    m, g, b = hp(running_mean, ctx), hp(g, ctx), hp(b, ctx)
    return [g * (hp(v, ctx) - m) * s + b for v in values]


FD_STEP = FD.mpf(10) ** -30


def central_difference(f, v):
    """(f(v + h) - f(v - h)) / 2h at h = 1e-30 in the 80-digit context: the truncation error is ~h**2."""
    return (f(v + FD_STEP) - f(v - FD_STEP)) / (2 * FD_STEP)


def _replace_at(values, j, t):
    return values[:j] + [t] + values[j + 1 :]


def channel_gradients(loss, values, g, b):
    """Central differences of loss(values, gamma, beta) with respect to each value, gamma and beta.

    beta only shifts y, so the x and gamma derivatives are taken at beta = 0: a large beta would
    otherwise swamp a tiny gamma's contribution to the loss, even at 80 digits."""
    dx = [central_difference(lambda t: loss(_replace_at(values, j, t), g, 0), hp(values[j], FD)) for j in range(len(values))]
    dgamma = central_difference(lambda t: loss(values, t, 0), hp(g, FD))
    dbeta = central_difference(lambda t: loss(values, g, t), hp(b, FD))
    return dx, dgamma, dbeta


def train_gradients(x, dy, gamma=None, beta=None, *, axis: int, eps: float, eps_outside=False, unbiased=False):
    """d/d(x, gamma, beta) of sum(dy * y) for the training forward, by 80-digit central differences:
    dx in x's shape, dgamma and dbeta per channel, as object arrays of HP numbers."""
    x = np.asarray(x, dtype=np.float64)
    idxs = channel_indices(x.shape, axis)
    g, b = per_channel(gamma, len(idxs), 1.0), per_channel(beta, len(idxs), 0.0)
    xs, dys = channel_values(x, axis), channel_values(dy, axis)
    dx, dgamma, dbeta = np.empty(x.size, dtype=object), [], []
    for c, idx in enumerate(idxs):

        def loss(values, gg, bb, dys=dys[c]):
            ys = hp_train_channel(values, gg, bb, eps=eps, eps_outside=eps_outside, unbiased=unbiased)
            return FD.fsum(hp(d, FD) * y for d, y in zip(dys, ys))

        fd_dx, fd_dgamma, fd_dbeta = channel_gradients(loss, xs[c], g[c], b[c])
        dx[idx] = [hp(v) for v in fd_dx]
        dgamma.append(hp(fd_dgamma))
        dbeta.append(hp(fd_dbeta))
    return dx.reshape(x.shape), np.array(dgamma, dtype=object), np.array(dbeta, dtype=object)


# ---------------------------------------------------------------- float64 rounding-error bounds

U = Fraction(1, 2**53)  # unit roundoff of float64
ETA = Fraction(1, 2**1075)  # half the smallest subnormal: the absolute error of an underflowing product


def gamma(k: int) -> Fraction:
    """gamma(k) = k u / (1 - k u): k roundings compound to at most this relative error."""
    return k * U / (1 - k * U)


def mean_error_bound(st: ExactStats) -> Fraction:
    """|fl(fl(sum x) / n) - mean| for a float64 mean computed as a sum (any order) divided by n.

    The sum is off by at most gamma(n - 1) * sum|x| = gamma(n - 1) * n * abs_mean; the division then adds
    at most u times the computed quotient, itself at most |mean| + that error.
    """
    summed = gamma(st.n - 1) * st.abs_mean
    return summed + U * (abs(st.mean) + summed) + ETA


def corrected_two_pass_error_bound(st: ExactStats) -> Fraction:
    """|T - S| for T = max(fl(sum d_i**2) - fl(fl(sum d_i)**2 / n), 0), d_i = fl(x_i - m), m the float64 mean.

    With e_i = x_i - m exactly and delta = m - mean (|delta| <= D = `mean_error_bound`):
      sum e_i**2 = S + n delta**2 (because sum(x_i - mean) = 0), and sum|e_i| <= n (abs_dev + D) =: E1.
      P = fl(sum fl(d_i**2)): each term carries three roundings (difference, square, the sum's own gamma(n-1)),
          so |P - (S + n delta**2)| <= gamma(n + 2) (S + n D**2) + n ETA.
      Q = fl(sum d_i) = -n delta + eta, |eta| <= u E1 + gamma(n - 1)(1 + u) E1 <= gamma(n) E1.
      R = fl(fl(Q**2) / n) = (n delta**2 - 2 delta eta + eta**2 / n)(1 + t), |t| <= gamma(2):
          |R - n delta**2| <= 2 D |eta| + eta**2 / n + gamma(2)(n D**2 + 2 D |eta| + eta**2 / n) + 2 ETA.
      T = fl(P - R): the first-order error n delta**2 of P cancels against R (that is why the algorithm
          subtracts R), leaving |T - S| <= (|P - S - n delta**2| + |R - n delta**2|)(1 + u) + u S.
      Clamping T at 0 only moves it toward S >= 0.
    """
    n, D = st.n, mean_error_bound(st)
    e2 = st.sum_sq + n * D**2
    e1 = n * (st.abs_dev + D)
    eta = gamma(n) * e1
    p_err = gamma(n + 2) * e2 + n * ETA
    r_err = 2 * D * eta + eta**2 / n + gamma(2) * (n * D**2 + 2 * D * eta + eta**2 / n) + 2 * ETA
    return (p_err + r_err) * (1 + U) + U * st.sum_sq


def variance_error_bound(st: ExactStats, unbiased: bool = False) -> Fraction:
    """|fl(T / k) - S / k| for k = n (biased) or n - 1 (unbiased): the sum-of-squares error over k, plus
    one rounding of the quotient."""
    k = st.n - 1 if unbiased else st.n
    t_err = corrected_two_pass_error_bound(st)
    return t_err / k * (1 + U) + U * st.sum_sq / k + ETA


_U, _ETA = hp(U), hp(ETA)


class Bounded:
    """A real number known exactly (`value`, HP) and a bound `err` on how far from it a float64 evaluation
    of the same expression, rounded operation by operation, can be (every bound is rigorous, second-order
    terms included; numbers that enter exactly, like the float64 inputs, have err 0).
    """

    __slots__ = ("value", "err")

    def __init__(self, value, err=0):
        self.value = hp(value)
        self.err = hp(err)

    def __repr__(self):
        return f"Bounded({mpmath.nstr(self.value, 17)}, err={mpmath.nstr(self.err, 3)})"

    @staticmethod
    def of(v) -> "Bounded":
        return v if isinstance(v, Bounded) else Bounded(v)

    @staticmethod
    def rounded(value, err, ulps=1) -> "Bounded":
        """The result of one float64 operation: the propagated error, plus `ulps` u of the computed result
        (at most |value| + err), plus the underflow allowance."""
        return Bounded(value, err + ulps * _U * (abs(value) + err) + _ETA)

    def __add__(self, other):
        o = Bounded.of(other)
        return Bounded.rounded(self.value + o.value, self.err + o.err)

    __radd__ = __add__

    def __neg__(self):
        return Bounded(-self.value, self.err)

    def __sub__(self, other):
        return self + (-Bounded.of(other))

    def __rsub__(self, other):
        return Bounded.of(other) - self

    def __mul__(self, other):
        o = Bounded.of(other)
        err = abs(self.value) * o.err + abs(o.value) * self.err + self.err * o.err
        return Bounded.rounded(self.value * o.value, err)

    __rmul__ = __mul__

    def __truediv__(self, other):
        o = Bounded.of(other)
        if not o.err < abs(o.value):
            raise ArithmeticError(f"divisor {o!r} may be zero: no error bound")
        err = (abs(self.value) * o.err + abs(o.value) * self.err) / (abs(o.value) * (abs(o.value) - o.err))
        return Bounded.rounded(self.value / o.value, err)

    def __rtruediv__(self, other):
        return Bounded.of(other) / self

    def sqrt(self) -> "Bounded":
        """|sqrt(a + d) - sqrt(a)| <= min(sqrt|d|, |d| / sqrt(a)); one rounding (sqrt is correctly rounded)."""
        if self.value < 0:
            raise ArithmeticError(f"sqrt of {self!r}")
        err = HP.sqrt(self.err)
        if self.value > 0:
            err = min(err, self.err / HP.sqrt(self.value))
        return Bounded.rounded(HP.sqrt(self.value), err)

    def power(self, k: int) -> "Bounded":
        """a**k through libm pow (within 1 ulp, i.e. 2 u): |(a + d)**k - a**k| <= (|a| + |d|)**k - |a|**k."""
        err = (abs(self.value) + self.err) ** k - abs(self.value) ** k
        return Bounded.rounded(self.value**k, err, ulps=2)

    @staticmethod
    def sum(terms) -> "Bounded":
        """A float64 sum of n terms in any order: propagated errors plus gamma(n - 1) * sum of |terms|."""
        terms = [Bounded.of(t) for t in terms]
        size = sum((abs(t.value) + t.err for t in terms), HP.mpf(0))
        err = sum((t.err for t in terms), HP.mpf(0)) + hp(gamma(len(terms) - 1)) * size
        return Bounded(HP.fsum(t.value for t in terms), err)


def inverse_std_bounded(var: Bounded, eps: float, eps_outside: bool = False) -> Bounded:
    """s as the oracle's formula evaluates it: 1 / sqrt(var + eps), or 1 / (sqrt(var) + eps)."""
    return 1 / (var.sqrt() + eps) if eps_outside else 1 / (var + eps).sqrt()


def train_output_bounds(x, gamma=None, beta=None, *, axis, eps, eps_outside=False, unbiased=False):
    """Per element, how far a float64 training forward may be from `train_forward`'s exact y.

    y = ((x - m) * s) * gamma + beta with m the float64 mean (off by `mean_error_bound`) and s computed
    from the float64 variance (off by `variance_error_bound`, the corrected two-pass algorithm). Returns
    an object array of HP bounds in x's shape.
    """
    x, flat, stats, g, b = _train_inputs(x, gamma, beta, axis)
    out = np.empty(x.size, dtype=object)
    for c, idx in enumerate(channel_indices(x.shape, axis)):
        st = stats[c]
        mean = Bounded(hp(st.mean), hp(mean_error_bound(st)))
        var = Bounded(hp(st.variance(unbiased)), hp(variance_error_bound(st, unbiased)))
        s = inverse_std_bounded(var, eps, eps_outside)
        for i in idx:
            out[i] = (((Bounded(flat[i]) - mean) * s) * g[c] + b[c]).err
    return out.reshape(x.shape)


def eval_output_bounds(x, gamma, beta, running_mean, running_var, *, axis, eps, eps_outside=False):
    """Per element, how far a float64 eval forward ((x - rm) * s(rv)) * gamma + beta may be from exact."""
    x, flat, idxs, g, b, rm, rv = _eval_inputs(x, gamma, beta, running_mean, running_var, axis)
    out = np.empty(x.size, dtype=object)
    for c, idx in enumerate(idxs):
        s = inverse_std_bounded(Bounded(rv[c]), eps, eps_outside)
        for i in idx:
            out[i] = (((Bounded(flat[i]) - rm[c]) * s) * g[c] + b[c]).err
    return out.reshape(x.shape)


# ---------------------------------------------------------------- comparison

# The exact values and the bounds are themselves evaluated at 60 digits: allow 1e-50 of their size for that.
REFERENCE_SLACK = HP.mpf(10) ** -50


def assert_within(actual, exact, bound, what: str):
    """Assert |actual - exact| <= bound element by element; the message shows the worst offenders."""
    actual = np.asarray(actual, dtype=np.float64)
    shape = actual.shape
    a, e, b = actual.ravel(), np.asarray(exact, dtype=object).ravel(), np.asarray(bound, dtype=object).ravel()
    assert a.size == e.size == b.size, f"{what}: sizes {a.size}, {e.size}, {b.size} differ"
    bad = []
    for i in range(a.size):
        if not math.isfinite(a[i]):
            bad.append((math.inf, i, a[i], e[i], None, b[i]))
            continue
        dev = abs(HP.mpf(float(a[i])) - e[i])
        allowed = b[i] + REFERENCE_SLACK * (abs(e[i]) + b[i])
        if dev > allowed:
            bad.append((dev / allowed if allowed else math.inf, i, a[i], e[i], dev, b[i]))
    if bad:
        bad.sort(key=lambda t: -float(t[0]))
        lines = [
            f"  at {np.unravel_index(i, shape)}: got {val!r}, exact {mpmath.nstr(ex, 20)}, "
            f"off by {mpmath.nstr(dev, 3) if dev is not None else 'non-finite'}, allowed {mpmath.nstr(bnd, 3)}"
            for _, i, val, ex, dev, bnd in bad[:5]
        ]
        raise AssertionError(f"{what}: {len(bad)} of {a.size} values outside their bound\n" + "\n".join(lines))
