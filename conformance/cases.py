"""Hypothesis strategies for whole cases: inputs shaped and parameterized for one backend and mode."""

import numpy as np
from hypothesis import strategies as st

from ..adapters.protocol import channel_axes
from ..spec import Inputs, Mode, RunningStats
from ..spec.error_model import split_layout
from . import strategies as bst

TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)
BACKWARD = (Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)


def _move_channels(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """(N, C, *spatial) with C moved to position `axis`."""
    dims = list(shape)
    c = dims.pop(1)
    dims.insert(axis % len(shape), c)
    return tuple(dims)


@st.composite
def case_inputs(draw, backend, mode: Mode, dtype: str = "float64", max_size: int = 2048, max_reduction: int = 1 << 16):
    """Inputs `backend` accepts for `mode`: its ranks and channel axes, affine on or off, running statistics
    (required in eval unless the convention then uses batch statistics), momentum in its own convention (None where it means a cumulative average).

    Training cases have at least two values per channel, and values stay within `dtype`'s range: one value
    per channel and infinite inputs are edge cases with their own rules. `dtype` may name a mixed layout
    ("float16/float32"): x is drawn for its data dtype, the parameters as for any other (`engine.prepare`
    rounds them to the parameter format), so the draws of a plain dtype are unchanged."""
    dtype, _ = split_layout(dtype)
    conv = backend.convention
    ranks = tuple(r for r in getattr(backend, "ranks", conv.ranks) if 2 <= r <= 5)
    shape = draw(bst.shapes(ranks=ranks, max_batch=16, max_size=max_size, max_reduction=max_reduction))
    batch_stats_possible = mode in TRAINING or conv.untracked_eval_uses_batch_stats
    if batch_stats_possible and int(np.prod(shape)) // shape[1] < 2:
        shape = (2, *shape[1:])
    axis = draw(st.sampled_from(channel_axes(backend)))
    shape = _move_channels(shape, axis)
    c = shape[axis]
    x = np.asarray(draw(bst.batches(shape, axis, dtype, allow_constant=True)), dtype=np.float64)
    gamma, beta = draw(bst.affine_params(c)) if draw(st.booleans()) else (None, None)
    running = None
    needs_running = mode not in TRAINING and not conv.untracked_eval_uses_batch_stats
    if conv.tracks_running_stats and (needs_running or draw(st.booleans())):
        mean, var = draw(bst.running_stats_values(c))
        running = RunningStats(mean, var, draw(st.integers(0, 3)))
    momentum = draw(bst.momenta())
    if conv.cumulative_average and running is not None and draw(st.booleans()):
        momentum = None  # half the cases where momentum=None means the cumulative average
    dy = None
    if mode in BACKWARD:
        dy = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)
    return Inputs(x=x, axis=axis, eps=draw(bst.eps_values()), gamma=gamma, beta=beta, running=running,
                  momentum=momentum, dy=dy)
