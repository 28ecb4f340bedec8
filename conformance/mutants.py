"""Deliberately wrong backends, to measure the suite's power to detect mistakes.

`REFERENCE` is a correct plain-NumPy backend under PyTorch's functional convention (float64 and float32,
CPU; training forward, eval forward, training backward). Each of `MUTANTS` makes one known mistake, and
names the quantity a conformance run must flag.
"""

from dataclasses import dataclass

import numpy as np

from ..spec import Mode
from ..spec.conventions import TORCH_FUNCTIONAL
from . import plain_numpy
from .arrays import round_to
from ..adapters.protocol import Outputs, Request


class PlainNumpyBackend:
    """plain_numpy behind the adapter protocol; `mistake` switches select one known error."""

    convention = TORCH_FUNCTIONAL
    modes = frozenset({Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD})
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def __init__(self, name: str, **mistake):
        self.name = name
        self.mistake = mistake

    def run(self, mode: Mode, r: Request) -> Outputs:
        m, compute = self.mistake, ("float64" if r.dtype == "float64" else "float32")
        x = round_to(r.x, r.dtype)
        c = x.shape[r.axis]
        gamma = np.ones(c) if r.gamma is None else r.gamma
        beta = np.zeros(c) if r.beta is None else r.beta
        rm = np.zeros(c) if r.running_mean is None else r.running_mean
        rv = np.ones(c) if r.running_var is None else r.running_var
        if mode is Mode.TRAIN_BACKWARD:
            g = plain_numpy.backward(round_to(r.dy, r.dtype), x, gamma, axis=r.axis, eps=r.eps, compute=compute,
                                     dgamma_without_invstd=m.get("dgamma_without_invstd", False))
            return Outputs(dx=g["dx"], dgamma=g["dgamma"], dbeta=g["dbeta"])
        if mode is Mode.EVAL_FORWARD and not m.get("eval_uses_batch_statistics"):
            return Outputs(y=plain_numpy.evaluate(x, gamma, beta, rm, rv, axis=r.axis, eps=r.eps, compute=compute)["y"])
        if m.get("channel_axis_ignored"):
            return Outputs(y=self._global_statistics(x, gamma, beta, r))
        switches = {k: v for k, v in m.items() if k in ("one_pass", "eps_outside", "running_unbiased", "momentum_reversed")}
        out = plain_numpy.train(x, gamma, beta, rm, rv, axis=r.axis, eps=r.eps, new_weight=r.momentum or 0.0,
                                compute=compute, **switches)
        result = Outputs(y=out["y"])
        if mode is Mode.TRAIN_FORWARD and r.running_mean is not None:
            frozen = m.get("running_not_updated")
            result.running_mean = r.running_mean if frozen else out["running_mean"]
            result.running_var = r.running_var if frozen else out["running_var"]
        return result

    @staticmethod
    def _global_statistics(x, gamma, beta, r: Request):
        shape = [-1 if i == r.axis % x.ndim else 1 for i in range(x.ndim)]
        xc = x.astype("float64")
        return (xc - xc.mean()) / np.sqrt(xc.var() + r.eps) * np.reshape(gamma, shape) + np.reshape(beta, shape)


@dataclass(frozen=True)
class Mutant:
    backend: PlainNumpyBackend
    mode: Mode
    quantity: str  # what a conformance run must flag


REFERENCE = PlainNumpyBackend("plain-numpy")

MUTANTS = {
    "eps outside the square root": Mutant(PlainNumpyBackend("mutant:eps-outside", eps_outside=True), Mode.TRAIN_FORWARD, "y"),
    "momentum style reversed": Mutant(PlainNumpyBackend("mutant:momentum-reversed", momentum_reversed=True), Mode.TRAIN_FORWARD, "running_mean"),
    "biased running variance": Mutant(PlainNumpyBackend("mutant:biased-running-var", running_unbiased=False), Mode.TRAIN_FORWARD, "running_var"),
    "one-pass variance in float32": Mutant(PlainNumpyBackend("mutant:one-pass", one_pass=True), Mode.TRAIN_FORWARD, "y"),
    "dgamma missing its 1/std": Mutant(PlainNumpyBackend("mutant:dgamma", dgamma_without_invstd=True), Mode.TRAIN_BACKWARD, "dgamma"),
    "channel axis ignored": Mutant(PlainNumpyBackend("mutant:axis", channel_axis_ignored=True), Mode.TRAIN_FORWARD, "y"),
    "running statistics not updated": Mutant(PlainNumpyBackend("mutant:frozen", running_not_updated=True), Mode.TRAIN_FORWARD, "running_mean"),
    "eval mode uses batch statistics": Mutant(PlainNumpyBackend("mutant:eval-batch", eval_uses_batch_statistics=True), Mode.EVAL_FORWARD, "y"),
}
