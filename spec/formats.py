"""Binary floating-point formats: precision p, exponent range, unit roundoff u = 2**-p, and ULPs.

Only the format's parameters are needed, so bfloat16 works without ml_dtypes installed.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-style binary format with `precision` significand bits (the implicit bit included)."""

    name: str
    precision: int
    min_exponent: int  # exponent of the smallest normal number: 2**min_exponent
    max_value: float

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-p: round-to-nearest moves a normal number by at most u times its magnitude."""
        return 2.0**-self.precision

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.precision + 1)

    def ulp(self, values) -> np.ndarray:
        """Spacing of this format at |values|: 2**(max(floor(log2|v|), emin) - p + 1)."""
        v = np.abs(np.asarray(values, dtype=np.float64))
        _, exponent = np.frexp(v)  # v = m * 2**exponent with m in [0.5, 1); frexp(0) = (0, 0)
        exponent = np.where(v == 0, self.min_exponent, np.maximum(exponent - 1, self.min_exponent))
        return np.where(np.isfinite(v), np.ldexp(1.0, exponent - self.precision + 1), np.nan)


FORMATS = {
    f.name: f
    for f in (
        FloatFormat("float64", 53, -1022, float(np.finfo(np.float64).max)),
        FloatFormat("float32", 24, -126, float(np.finfo(np.float32).max)),
        FloatFormat("float16", 11, -14, 65504.0),
        FloatFormat("bfloat16", 8, -126, 3.3895313892515355e38),
    )
}


def float_format(dtype) -> FloatFormat:
    """The format of a dtype given as a name ('float32'), a NumPy dtype or an ml_dtypes dtype."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    try:
        return FORMATS[name]
    except KeyError:
        from .checks import InputError  # checks imports this module

        raise InputError(f"unsupported dtype {name!r}: bnconf knows {', '.join(FORMATS)}") from None


def wider(a: FloatFormat, b: FloatFormat) -> FloatFormat:
    """The format with the smaller unit roundoff (float16 and bfloat16 both widen to float32)."""
    return a if a.precision >= b.precision else b
