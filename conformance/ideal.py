"""The oracle as a backend: what a perfect implementation of a convention returns, in float64.

`IdealBackend(convention)` answers every mode with the spec's values under `convention`, so that the
machinery that compares backends (cross-framework translation, convention inference) can be tested
without any framework installed, and so that a run can put "the spec itself" beside real backends.
"""

from ..adapters.protocol import Outputs, Request
from ..spec import Convention, Inputs, Mode, RunningStats, expected
from ..spec.error_model import ORACLE_PRECISION


def inputs_of(r: Request) -> Inputs:
    """The spec's view of a backend request (the inverse of engine.request)."""
    running = None if r.running_mean is None else RunningStats(r.running_mean, r.running_var, r.batches_seen)
    return Inputs(x=r.x, axis=r.axis, eps=r.eps, gamma=r.gamma, beta=r.beta, running=running,
                  momentum=r.momentum, dy=r.dy)


class IdealBackend:
    """A float64 backend whose outputs are the oracle's under `convention`."""

    modes = frozenset(Mode)
    dtypes = ("float64",)
    devices = ("cpu",)

    def __init__(self, convention: Convention):
        self.convention = convention
        self.name = f"ideal[{convention.name}]"
        self.ranks = convention.ranks

    def run(self, mode: Mode, r: Request) -> Outputs:
        values = expected(mode, inputs_of(r), self.convention, ORACLE_PRECISION)
        out = Outputs(**{q: e.value for q, e in values.items()})
        if mode is Mode.TRAIN_FORWARD and r.running_mean is not None:
            out.batches_seen = r.batches_seen + 1
        return out
