"""Floating-point formats: unit roundoff and ULPs agree with NumPy and ml_dtypes."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bnconf.spec import float_format


@pytest.mark.parametrize("name, dtype", [("float64", np.float64), ("float32", np.float32), ("float16", np.float16)])
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=16))
def test_ulp_is_numpys_spacing(name, dtype, value):
    v = dtype(value)
    assume(np.abs(v) < np.finfo(dtype).max)  # np.spacing at the largest value steps to Inf
    assert float_format(name).ulp(float(v)) == float(np.spacing(np.abs(v)))


@given(value=st.floats(-1e30, 1e30))
def test_bfloat16_ulp_is_the_step_to_the_next_bit_pattern(value):
    v = np.abs(np.asarray([value]).astype(ml_dtypes.bfloat16))
    next_up = (v.view(np.uint16) + np.uint16(1)).view(ml_dtypes.bfloat16)
    assert float_format("bfloat16").ulp(float(v[0])) == float(next_up[0]) - float(v[0])


def test_unit_roundoffs():
    assert [float_format(n).unit_roundoff for n in ("float64", "float32", "float16", "bfloat16")] == [2.0**-53, 2.0**-24, 2.0**-11, 2.0**-8]


def test_an_unknown_dtype_is_named():
    with pytest.raises(ValueError, match="int8"):
        float_format("int8")
