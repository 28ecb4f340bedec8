"""The bounded shape vocabulary backend cases draw from (conformance/strategies.py, issue 18 item 5) keeps every
shape the spec needs: per rank, one value per channel, a batch of one with several values per channel, one channel,
dims of 1, odd, prime and power-of-two values per channel, every remainder mod 8 above 16, and long reductions
beyond 2**16 values per channel when the caller allows them. A JIT-compiling backend then meets a bounded set of
programs without the battery testing less."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnconf.conformance.strategies import LONG_REDUCTIONS, SHAPE_VOCABULARY, vocabulary_shapes


def per_channel(shape):
    return int(np.prod(shape)) // shape[1]


def is_prime(n):
    return n > 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


@pytest.mark.parametrize("rank", sorted(SHAPE_VOCABULARY))
def test_every_rank_has_the_shapes_the_spec_needs(rank):
    shapes = SHAPE_VOCABULARY[rank]
    counts = [per_channel(s) for s in shapes]
    assert all(len(s) == rank for s in shapes)
    assert 1 in counts, "one value per channel (eval; training turns it into a batch of 2)"
    assert any(s[1] == 1 for s in shapes), "one channel"
    assert any(n % 2 and n > 1 for n in counts), "an odd count"
    assert any(is_prime(n) for n in counts), "a prime count"
    assert any(n > 1 and n & (n - 1) == 0 for n in counts), "a power of two"
    assert {n % 8 for n in counts if n > 16} == set(range(8)), "every remainder mod 8 above 16"
    assert max(counts) >= 64
    if rank > 2:
        assert any(s[0] == 1 and per_channel(s) > 1 for s in shapes), "a batch of one, several values per channel"
        assert any(1 in s[2:] for s in shapes), "a spatial dim of 1"


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(data=st.data(), ranks=st.sampled_from([(2,), (3,), (4,), (5,), (2, 3, 4, 5)]),
       max_size=st.sampled_from([1, 24, 2048]), max_reduction=st.sampled_from([0, 1 << 16]))
def test_a_drawn_shape_respects_the_rank_and_size_bounds(data, ranks, max_size, max_reduction):
    shape = data.draw(vocabulary_shapes(ranks=ranks, max_size=max_size, max_reduction=max_reduction))
    assert len(shape) in ranks
    size = int(np.prod(shape))
    if size > max_size and shape not in [SHAPE_VOCABULARY[len(shape)][0]]:
        assert per_channel(shape) <= max_reduction and per_channel(shape) >= min(LONG_REDUCTIONS) - 16


def test_long_reductions_are_drawn_when_allowed_and_never_otherwise():
    seen = {True: set(), False: set()}
    for allowed in (True, False):
        @settings(max_examples=200, database=None, deadline=None)
        @given(vocabulary_shapes(ranks=(2, 4), max_size=2048, max_reduction=(1 << 16) if allowed else 0))
        def draw(shape):
            seen[allowed].add(per_channel(shape) > 2048)
        draw()
    assert seen[True] == {True, False}
    assert seen[False] == {False}
