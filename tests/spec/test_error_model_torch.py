"""PyTorch's CPU batch norm, a real correct implementation, stays inside the error model's bounds.

float64, float32, bfloat16 and float16 inputs (float32 parameters and statistics for the half types),
contiguous and channels_last memory, training forward, backward and eval forward.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bnconf.conformance import strategies as bst
from bnconf.spec import Inputs, Mode, RunningStats, Verdict, convention, judge, precision_for

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e \".[torch]\")")

TORCH = convention("torch.nn.functional.batch_norm")
from bnconf.adapters.torch_batchnorm import TORCH_DTYPES, FunctionalBatchNorm  # noqa: E402
from bnconf.conformance.engine import request  # noqa: E402


@st.composite
def nchw_problems(draw, dtype):
    shape = draw(bst.shapes(ranks=(2, 4), max_batch=32, max_size=4096))
    x = draw(bst.batches(shape, 1, dtype))
    params = "float64" if dtype == "float64" else "float32"
    gamma, beta = (bst.round_to(a, params) for a in draw(bst.affine_params(shape[1])))
    rm, rv = (bst.round_to(a, params) for a in draw(bst.running_stats_values(shape[1])))
    dy = bst.round_to(np.random.default_rng(draw(st.integers(0, 2**31))).standard_normal(shape), dtype)
    momentum = float(np.float32(draw(bst.momenta())))
    eps = draw(bst.eps_values())
    return Inputs(x=x, axis=1, eps=eps, gamma=gamma, beta=beta, running=RunningStats(rm, rv), momentum=momentum, dy=dy)


class _ContiguousDy(FunctionalBatchNorm):
    """The functional adapter with x in channels_last but the upstream gradient left contiguous."""

    def _gradients(self, x, params, r):
        y, gamma, beta = params
        y.backward(torch.tensor(np.asarray(r.dy)).to(y.dtype))
        return tuple(t.grad.detach().to(torch.float64).numpy() for t in (x, gamma, beta))


def _run_torch(i: Inputs, dtype: str, channels_last: bool, training: bool, backend=None):
    """Forward and backward quantities of F.batch_norm, through the project's own adapter."""
    backend = backend or FunctionalBatchNorm(channels_last)
    modes = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD) if training else (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD)
    return tuple(backend.run(mode, request(i, dtype, "cpu")).quantities() for mode in modes)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@given(data=st.data())
def test_torch_training_forward_and_backward_stay_within_the_bound(dtype, channels_last, data):
    i = data.draw(nchw_problems(dtype))
    assume(i.x.size > i.x.shape[1])  # PyTorch raises for one value per channel in training (a known, separate case)
    forward, backward = _run_torch(i, dtype, channels_last, training=True)
    p = precision_for(dtype)
    results = {**judge(Mode.TRAIN_FORWARD, forward, i, TORCH, p), **judge(Mode.TRAIN_BACKWARD, backward, i, TORCH, p)}
    bad = {q: (c.verdict.value, c.max_ratio) for q, c in results.items() if c.verdict not in (Verdict.CONFORMS, Verdict.ILL_CONDITIONED)}
    assert not bad


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@given(data=st.data())
def test_torch_eval_forward_and_backward_stay_within_the_bound(dtype, data):
    i = data.draw(nchw_problems(dtype))
    forward, backward = _run_torch(i, dtype, channels_last=False, training=False)
    p = precision_for(dtype)
    results = {**judge(Mode.EVAL_FORWARD, forward, i, TORCH, p), **judge(Mode.EVAL_BACKWARD, backward, i, TORCH, p)}
    bad = {q: (c.verdict.value, c.max_ratio) for q, c in results.items() if c.verdict not in (Verdict.CONFORMS, Verdict.ILL_CONDITIONED)}
    assert not bad


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_half_backward_with_channels_last_x_and_contiguous_dy_loses_float32_accuracy(dtype):
    """Known discrepancy (torch 2.13 CPU): with x channels_last but dy contiguous, the half-precision
    backward computes dx at half precision: outside the float32-compute bound by several times, while the
    same inputs with dy in x's memory format conform. Recorded here as evidence, not excused, and the
    diagnosis names half precision (spec/diagnosis.py), not a one-pass variance or a convention."""
    rng = np.random.default_rng(0)
    x = bst.round_to(rng.normal(2, 1, (8, 3, 4, 4)), dtype)
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=bst.round_to(rng.normal(size=3), "float32"), beta=np.zeros(3, np.float32),
               running=RunningStats.initial(3), momentum=0.1, dy=bst.round_to(rng.normal(size=x.shape), dtype))
    p = precision_for(dtype)
    _, mixed = _run_torch(i, dtype, channels_last=True, training=True, backend=_ContiguousDy(channels_last=True))
    _, matched = _run_torch(i, dtype, channels_last=True, training=True)
    dx = judge(Mode.TRAIN_BACKWARD, mixed, i, TORCH, p)["dx"]
    assert dx.verdict is Verdict.PRECISION_DIFFERENCE and "in half precision" in dx.detail, dx.detail
    assert judge(Mode.TRAIN_BACKWARD, matched, i, TORCH, p)["dx"].verdict is Verdict.CONFORMS


def _check_training(i: Inputs, dtype: str, channels_last: bool):
    forward, backward = _run_torch(i, dtype, channels_last, training=True)
    p = precision_for(dtype)
    results = {**judge(Mode.TRAIN_FORWARD, forward, i, TORCH, p), **judge(Mode.TRAIN_BACKWARD, backward, i, TORCH, p)}
    return {q: (c.verdict.value, c.max_ratio) for q, c in results.items() if c.verdict not in (Verdict.CONFORMS, Verdict.ILL_CONDITIONED)}


def test_a_gamma_at_the_smallest_normal_number_underflows_within_the_bound():
    """Found by the thorough profile: gamma = 2.2e-308 makes gamma * invstd * k subnormal, and the
    kernel multiplies that coefficient by x - mean, not by z (1.37x the bound before the model knew)."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 3, (5, 3))
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.array([0.0, 0.0, 2.2250738585072014e-308]), beta=np.zeros(3),
               running=RunningStats.initial(3), momentum=0.0, dy=rng.normal(size=x.shape))
    assert not _check_training(i, "float64", channels_last=False)


@pytest.mark.parametrize("seed, batch, side", [(37, 6, 3), (109, 19, 2), (176, 8, 3)])
def test_a_constant_channel_with_a_large_offset_keeps_dx_within_the_bound(seed, batch, side):
    """Found by the thorough profile: a constant channel at -316.2 has z = 0 exactly, but the kernel's
    mean is off by a few ulps, so its z and mean(dy z) are both off and their product (second order)
    matters because invstd = 316 (up to 18x the bound before the model had that term)."""
    rng = np.random.default_rng(seed)
    n, h = int(rng.integers(2, 33)), int(rng.integers(1, 4))
    assert (n, h) == (batch, side)
    x = rng.normal(size=(n, 4, h, h)).astype(np.float32)
    x[:, 2] = np.float32(-316.227753)
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(4, np.float32), beta=np.zeros(4, np.float32),
               running=RunningStats.initial(4), momentum=0.1, dy=rng.normal(size=x.shape).astype(np.float32))
    assert not _check_training(i, "float32", channels_last=True)
