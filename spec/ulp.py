"""Errors in ULPs where a ULP figure means something (SPEC.md section 4.9).

The distance of an observed value from the oracle's, in representable values of the quantity's format at the
oracle's magnitude, with a floor at the format's smallest normal number:

    ulps = |observed - expected| / spacing(max(|expected|, smallest normal))

It is shown only for elements where the error model itself promises relative accuracy: where the element's
bound is at most ULP_LIMIT such spacings. Elsewhere (a result that cancels to nearly nothing, an absolute
bound near zero or in the subnormal range) a count of ULPs measures the reference's smallness, not the
implementation's accuracy, and there is no figure. An element within its bound is therefore never more than
ULP_LIMIT ULPs off, so a conforming quantity never shows more.
"""

import numpy as np

from .formats import float_format

ULP_LIMIT = 1024.0  # spacings: the largest bound for which an element's ULP figure is shown


def spacing(values, fmt: str) -> np.ndarray:
    """spacing(max(|v|, smallest normal)) in format `fmt`, for finite v: 2**(e - p) with max(|v|, 2**emin) =
    m 2**e, m in [0.5, 1) (`FloatFormat.ulp` at |v|, without its int64 exponents, which make ldexp slow)."""
    f = float_format(fmt)
    _, exponent = np.frexp(np.maximum(np.abs(np.asarray(values, dtype=np.float64)), 2.0**f.min_exponent))
    return np.ldexp(1.0, exponent - f.precision)


def meaningful(bound: np.ndarray, space: np.ndarray) -> np.ndarray:
    """Elements whose bound is at most ULP_LIMIT spacings: where the spec promises relative accuracy."""
    with np.errstate(invalid="ignore"):
        return bound <= ULP_LIMIT * space


def max_ulps(observed: np.ndarray, expected: np.ndarray, bound: np.ndarray, fmt: str) -> float | None:
    """max |observed - expected| / spacing over the elements given (finite, with a bound) that are meaningful;
    None when there is none."""
    space = spacing(expected, fmt)
    where = meaningful(bound, space)
    if not where.any():
        return None
    return float(np.max(np.abs(observed[where] - expected[where]) / space[where]))


def relative_error(observed: float, expected: float, fmt: str) -> float:
    """|observed - expected| / max(|expected|, the format's smallest normal number)."""
    return float(abs(observed - expected) / max(abs(expected), 2.0 ** float_format(fmt).min_exponent))
