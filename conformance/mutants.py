"""Deliberately wrong backends, to measure the suite's power to detect mistakes and to name them.

`REFERENCE` is a correct plain-NumPy backend under PyTorch's functional convention (float64 and float32,
CPU; training forward, eval forward, training backward). Each of `MUTANTS` makes one known mistake: it names
the quantity a conformance run must flag, and the diagnosis (spec/diagnosis.py) that row must get. Among them
are backends that are correct but for their precision, which a diagnosis must not misname: float16 and bfloat16
computed in half precision while declaring float32 arithmetic ("arithmetic in half precision", never a one-pass
variance), and float64 with eps held in float32.
"""

from dataclasses import dataclass, replace

import numpy as np

from ..spec import Mode, Variance
from ..spec import diagnosis as dx
from ..spec.conventions import HAIKU_BATCHNORM, ONNX_BATCHNORM, TORCH_FUNCTIONAL, Convention, new_batch_weight
from . import plain_numpy
from .arrays import round_to
from ..adapters.protocol import Outputs, Request

SWITCHES = frozenset({
    "half_arithmetic",  # every operation in the data's half-precision format (float16 or bfloat16)
    "half_accumulation",  # the reductions' accumulators in the data's half-precision format
    "eps_float32", "momentum_float32",  # eps / momentum rounded to float32 before use
    "one_pass", "eps_outside", "unbiased_normalization", "running_unbiased", "momentum_reversed", "zero_debias",
    "swap_affine", "affine_ignored", "channel_axis_ignored", "running_not_updated", "eval_uses_batch_statistics",
    "eval_updates_running", "dgamma_without_invstd", "dx_without_mean_dy", "dbeta_mean",
    "saved_var_holds", "saved_invstd_holds",  # "invstd", "std", "unbiased" / "std", "var": another statistic
})


class PlainNumpyBackend:
    """plain_numpy behind the adapter protocol, correct under its `convention` unless `mistake` switches (SWITCHES)
    select known errors; saved statistics are returned where a saved_* switch is set or `saved=True`."""

    convention = TORCH_FUNCTIONAL
    modes = frozenset({Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD})
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def __init__(self, name: str, dtypes=None, convention: Convention | None = None, saved: bool = False, **mistake):
        unknown = set(mistake) - SWITCHES
        if unknown:
            raise ValueError(f"unknown switches {sorted(unknown)}; known: {sorted(SWITCHES)}")
        self.name, self.mistake = name, mistake
        if dtypes is not None:
            self.dtypes = tuple(dtypes)
        if convention is not None:
            self.convention = convention
        self.saved = saved or any(k.startswith("saved_") for k in mistake)

    def _formats(self, dtype: str) -> tuple[str, str | None]:
        """(compute, accumulate) formats: the usual ones (float64 for float64, else float32) unless switched."""
        compute = dtype if self.mistake.get("half_arithmetic") else ("float64" if dtype == "float64" else "float32")
        return compute, (dtype if self.mistake.get("half_accumulation") else None)

    def _attributes(self, r: Request) -> tuple[float, float | None]:
        """eps and momentum as used: rounded to float32 where switched."""
        m = self.mistake
        eps = float(np.float32(r.eps)) if m.get("eps_float32") else r.eps
        momentum = r.momentum
        if m.get("momentum_float32") and momentum is not None:
            momentum = float(np.float32(momentum))
        return eps, momentum

    def _affine(self, r: Request, c: int) -> tuple[np.ndarray, np.ndarray]:
        gamma = np.ones(c) if r.gamma is None else r.gamma
        beta = np.zeros(c) if r.beta is None else r.beta
        if self.mistake.get("affine_ignored"):
            return np.ones(c), np.zeros(c)
        swapped = self.mistake.get("swap_affine") and r.gamma is not None and r.beta is not None
        return (beta, gamma) if swapped else (gamma, beta)

    def _weight(self, momentum: float | None, batches_seen: int) -> float:
        """The weight on the new batch: the convention's, zero-debiased where the convention (or a switch) says."""
        w = new_batch_weight(self.convention, momentum or 0.0)
        debias = self.mistake.get("zero_debias", self.convention.zero_debias)
        if debias:
            t = batches_seen + 1
            # 1 - (1 - w)**t as -expm1(t log1p(-w)), as the oracle forms it: no 0 for a subnormal w (1 - w rounds to 1)
            return w / -np.expm1(t * np.log1p(-w)) if w > 0 else 1.0 / t
        return w

    def run(self, mode: Mode, r: Request) -> Outputs:
        m, (compute, accumulate) = self.mistake, self._formats(r.dtype)
        eps, momentum = self._attributes(r)
        x = round_to(r.x, r.dtype)
        c = x.shape[r.axis]
        gamma, beta = self._affine(r, c)
        rm = np.zeros(c) if r.running_mean is None else r.running_mean
        rv = np.ones(c) if r.running_var is None else r.running_var
        if mode is Mode.TRAIN_BACKWARD:
            g = plain_numpy.backward(round_to(r.dy, r.dtype), x, gamma, axis=r.axis, eps=eps, compute=compute,
                                     accumulate=accumulate, **{k: m.get(k, False) for k in (
                                         "dgamma_without_invstd", "dx_without_mean_dy", "dbeta_mean")})
            return Outputs(dx=g["dx"], dgamma=g["dgamma"], dbeta=g["dbeta"])
        train = lambda: self._train(x, gamma, beta, rm, rv, r, eps, momentum, compute, accumulate)  # noqa: E731
        if mode is Mode.EVAL_FORWARD:
            return self._eval(x, gamma, beta, rm, rv, r, eps, compute, train)
        if m.get("channel_axis_ignored"):
            return Outputs(y=self._global_statistics(x, gamma, beta, r))
        out = train()
        result = Outputs(y=out["y"])
        if r.running_mean is not None:
            frozen = m.get("running_not_updated")
            result.running_mean = r.running_mean if frozen else out["running_mean"]
            result.running_var = r.running_var if frozen else out["running_var"]
        if self.saved:
            result.saved_mean, result.saved_var, result.saved_invstd = self._saved(out, x.size // c)
        return result

    def _train(self, x, gamma, beta, rm, rv, r: Request, eps, momentum, compute, accumulate) -> dict:
        m, conv = self.mistake, self.convention
        switches = {k: m[k] for k in ("one_pass", "eps_outside", "momentum_reversed") if k in m}
        return plain_numpy.train(
            x, gamma, beta, rm, rv, axis=r.axis, eps=eps, new_weight=self._weight(momentum, r.batches_seen),
            compute=compute, accumulate=accumulate, **switches,
            running_unbiased=m.get("running_unbiased", conv.running_var is Variance.UNBIASED),
            unbiased_normalization=m.get("unbiased_normalization", conv.normalize_with is Variance.UNBIASED))

    def _eval(self, x, gamma, beta, rm, rv, r: Request, eps, compute, train) -> Outputs:
        """Eval: normalized with the running statistics (or the batch's, where switched: `train()` computes the
        training forward); the running statistics read back after the call only where switched to update them."""
        m = self.mistake
        if m.get("eval_uses_batch_statistics"):
            return Outputs(y=train()["y"])
        y = plain_numpy.evaluate(x, gamma, beta, rm, rv, axis=r.axis, eps=eps, compute=compute)["y"]
        if m.get("eval_updates_running") and r.running_mean is not None:
            updated = train()
            return Outputs(y=y, running_mean=updated["running_mean"], running_var=updated["running_var"])
        return Outputs(y=y)

    def _saved(self, out: dict, n: int) -> tuple:
        """(saved_mean, saved_var, saved_invstd), with another statistic in one of them where switched; `n` values
        per channel."""
        var, invstd = out["saved_var"], out["saved_invstd"]
        one = var.dtype.type(1)
        held = {"invstd": invstd, "std": one / invstd, "var": var, "unbiased": var * var.dtype.type(n) / var.dtype.type(n - 1)}
        saved_var = held[self.mistake.get("saved_var_holds", "var")]
        saved_invstd = held[self.mistake.get("saved_invstd_holds", "invstd")]
        return out["saved_mean"], saved_var, saved_invstd

    @staticmethod
    def _global_statistics(x, gamma, beta, r: Request):
        shape = [-1 if i == r.axis % x.ndim else 1 for i in range(x.ndim)]
        xc = x.astype("float64")
        return (xc - xc.mean()) / np.sqrt(xc.var() + r.eps) * np.reshape(gamma, shape) + np.reshape(beta, shape)


@dataclass(frozen=True)
class Mutant:
    """A wrong backend, the cell that shows it, and what a conformance run must say there."""

    backend: PlainNumpyBackend
    mode: Mode
    quantity: str  # what a conformance run must flag
    diagnosis: str  # the name the row of `quantity` must be diagnosed with (spec/diagnosis.py)
    dtype: str = "float32"


REFERENCE = PlainNumpyBackend("plain-numpy")

HALF = ("float16", "bfloat16")
TRAIN, EVAL, BACKWARD = Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD
# a record that normalizes with the unbiased variance: none of the frameworks', here to name its opposite mistake
UNBIASED_NORMALIZING = replace(TORCH_FUNCTIONAL, name="test record: normalized with the unbiased variance",
                               normalize_with=Variance.UNBIASED)


def _mutant(label: str, mode: Mode, quantity: str, diagnosis: str, dtype: str = "float32", **backend) -> tuple:
    """(label, Mutant) for a PlainNumpyBackend named after the label, running `dtype` (and float64/float32)."""
    dtypes = tuple(dict.fromkeys((dtype, "float64", "float32")))
    name = "mutant:" + label.replace(" ", "-")
    return label, Mutant(PlainNumpyBackend(name, dtypes=dtypes, **backend), mode, quantity, diagnosis, dtype)


MUTANTS: dict[str, Mutant] = dict([
    # the first eight, as they have always been labelled
    _mutant("eps outside the square root", TRAIN, "y", dx.HYPOTHESES[0].name, eps_outside=True),
    _mutant("momentum style reversed", TRAIN, "running_mean", "momentum applied the wrong way round", momentum_reversed=True),
    _mutant("biased running variance", TRAIN, "running_var", "running variance biased instead of unbiased", running_unbiased=False),
    _mutant("one-pass variance in float32", TRAIN, "y", dx.ONE_PASS.name, one_pass=True),
    _mutant("dgamma missing its 1/std", BACKWARD, "dgamma", dx.DGAMMA_WITHOUT_INVSTD.name, dgamma_without_invstd=True),
    _mutant("channel axis ignored", TRAIN, "y", dx.CHANNEL_AXIS_IGNORED.name, channel_axis_ignored=True),
    _mutant("running statistics not updated", TRAIN, "running_mean", dx.RUNNING_NOT_UPDATED.name, running_not_updated=True),
    _mutant("eval mode uses batch statistics", EVAL, "y", dx.EVAL_BATCH_STATISTICS.name, eval_uses_batch_statistics=True),
    # one per further hypothesis
    _mutant("normalized with the unbiased variance", TRAIN, "y", "normalized with the unbiased variance",
            unbiased_normalization=True),
    _mutant("normalized with the biased variance", TRAIN, "y", "normalized with the biased variance",
            convention=UNBIASED_NORMALIZING, unbiased_normalization=False),
    _mutant("unbiased running variance", TRAIN, "running_var", "running variance unbiased instead of biased",
            convention=ONNX_BATCHNORM, running_unbiased=True),
    _mutant("zero-debiased moving average", TRAIN, "running_mean", "zero-debiased moving average", zero_debias=True),
    _mutant("moving average not zero-debiased", TRAIN, "running_mean", "moving average not zero-debiased",
            convention=HAIKU_BATCHNORM, zero_debias=False),
    _mutant("gamma and beta swapped", TRAIN, "y", dx.GAMMA_BETA_SWAPPED.name, swap_affine=True),
    _mutant("gamma and beta not applied", TRAIN, "y", dx.AFFINE_IGNORED.name, affine_ignored=True),
    _mutant("eval updates the running statistics", EVAL, "running_mean", dx.RUNNING_UPDATED_IN_EVAL.name,
            eval_updates_running=True),
    _mutant("dbeta as a mean", BACKWARD, "dbeta", dx.DBETA_MEAN.name, dbeta_mean=True),
    _mutant("dx without the mean(dy) term", BACKWARD, "dx", dx.DX_WITHOUT_MEAN_DY.name, dx_without_mean_dy=True),
    _mutant("saved_var holds 1/sqrt(var + eps)", TRAIN, "saved_var", dx.SAVED_VAR_INVSTD.name, saved_var_holds="invstd"),
    _mutant("saved_var holds sqrt(var + eps)", TRAIN, "saved_var", dx.SAVED_VAR_STD.name, saved_var_holds="std"),
    _mutant("saved_var holds the unbiased variance", TRAIN, "saved_var", dx.SAVED_VAR_UNBIASED.name,
            saved_var_holds="unbiased"),
    _mutant("saved_invstd holds sqrt(var + eps)", TRAIN, "saved_invstd", dx.SAVED_INVSTD_STD.name, saved_invstd_holds="std"),
    _mutant("saved_invstd holds the variance", TRAIN, "saved_invstd", dx.SAVED_INVSTD_VAR.name, saved_invstd_holds="var"),
    _mutant("momentum held in float32", TRAIN, "running_mean", dx.MOMENTUM_IN_FLOAT32.name, "float64", momentum_float32=True),
    _mutant("float16 statistics accumulated in float16", TRAIN, "y", dx.ACCUMULATED_IN_HALF.name, "float16",
            half_accumulation=True),
    # correct but for their precision: never to be called a one-pass variance (an eval forward sums nothing: its
    # half-precision arithmetic is nothing but that)
    _mutant("eps held in float32 on float64 data", TRAIN, "y", dx.EPS_IN_FLOAT32.name, "float64", eps_float32=True),
    *(_mutant(f"{h} eval computed in {h}", EVAL, "y", dx.ARITHMETIC_IN_HALF.name, h, half_arithmetic=True) for h in HALF),
])

# Correct backends but for computing everything in half precision while declaring float32 arithmetic, in training
# and backward: every NON-CONFORMANT row of theirs must be named one of HALF_PRECISION, never a one-pass variance or
# a convention. Which of the two depends on the cases: with worst-case summation bounds the sums' error covers the
# elementwise roundings but at small n or in a running update, so often only "the sums are in half precision" shows
# (SPEC.md section 4.9).
HALF_PRECISION = (dx.ACCUMULATED_IN_HALF.name, dx.ARITHMETIC_IN_HALF.name)
HALF_PRECISION_BACKENDS: dict[str, Mutant] = dict(
    _mutant(f"{h} {words} computed in {h}", mode, quantity, dx.ARITHMETIC_IN_HALF.name, h, half_arithmetic=True)
    for h in HALF for words, mode, quantity in (("training", TRAIN, "running_mean"), ("backward", BACKWARD, "dx"))
)
