"""The oracle's self-check (`bnconf selfcheck`): the spec against independent computations.

1. the oracle's forward against exact rationals and 60-digit arithmetic (`exact`), with `exact`'s
   rigorous float64 bounds;
2. the oracle's backward against 80-digit central differences, within the error model's float64 bound;
3. running statistics after k identical batches against their closed form, for every convention;
4. the error model at work on plain NumPy implementations (`plain_numpy`): correct float32/16/bfloat16
   ones conform, the three classic mistakes are named and stand far outside their bounds, a one-pass
   variance is classified as an unstable algorithm;
5. the diagnosis (spec/diagnosis.py) on plain NumPy implementations that are right but for their precision:
   half-precision arithmetic declared as float32 and eps held in float32 on float64 data are named so, never
   a one-pass variance.

Each check is a function returning a `CheckResult`; nothing here depends on a framework or Hypothesis.
"""

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..spec import (
    CONVENTIONS,
    NUMPY_PAIRWISE,
    Inputs,
    Mode,
    MomentumStyle,
    RunningStats,
    Variance,
    Verdict,
    convention,
    expected,
    forward_train,
    judge,
    precision_for,
    variants,
)
from ..spec import diagnosis
from ..spec.conventions import EpsPlacement
from . import exact, plain_numpy
from .arrays import values_with_moments

REFERENCE = convention("torch.nn.functional.batch_norm")


@dataclass(frozen=True)
class CheckResult:
    name: str
    cases: int
    worst: str  # the worst figure measured, in words
    ok: bool


def _forward_semantics():
    """The distinct training-forward semantics: the recorded one (all records agree) and two mistakes."""
    v = variants(REFERENCE)
    return {"recorded": REFERENCE, "eps outside": v["eps outside the square root"],
            "unbiased normalization": v["normalized with the unbiased variance"]}


def _problems():
    """Small seeded inputs: ranks 2-5, channel axis first and last, a constant channel, |mean|/std = 1e6."""
    hard = values_with_moments((6, 3), 1, np.array([0.1, 1e6, -2.0]), np.array([0.0, 1.0, 3.0]), 4)
    return [
        (values_with_moments((5, 3), 1, np.array([0.5, -1.0, 3.0]), np.ones(3), 0), 1),
        (values_with_moments((2, 3, 4), 1, np.array([10.0, 0.0, -5.0]), np.array([2.0, 1.0, 0.1]), 1), 1),
        (values_with_moments((2, 3, 2, 2), -1, np.array([1.0, 2.0]), np.array([1.0, 5.0]), 2), -1),
        (values_with_moments((2, 2, 1, 2, 3), -1, np.zeros(3), np.array([1e-3, 1.0, 1e3]), 3), -1),
        (hard, 1),
    ]


def _ratio(dev, bound) -> float:
    return float(dev / bound) if bound else (0.0 if dev == 0 else float("inf"))


def oracle_forward_vs_exact() -> CheckResult:
    worst, cases = 0.0, 0
    for conv in _forward_semantics().values():
        flags = dict(eps_outside=conv.eps_placement is EpsPlacement.OUTSIDE_SQRT,
                     unbiased=conv.normalize_with is Variance.UNBIASED)
        for x, axis in _problems():
            c = x.shape[axis]
            gamma, beta = np.linspace(-2, 2, c), np.linspace(1, -1, c)
            y = forward_train(x, gamma, beta, convention=conv, axis=axis, eps=1e-5).y
            ref = exact.train_forward(x, gamma, beta, axis=axis, eps=1e-5, **flags)
            bound = exact.train_output_bounds(x, gamma, beta, axis=axis, eps=1e-5, **flags)
            for got, e, b in zip(y.ravel(), ref.ravel(), bound.ravel()):
                worst = max(worst, _ratio(abs(exact.hp(float(got)) - e), b))
            cases += 1
    return CheckResult("oracle training forward vs exact arithmetic", cases, f"error/bound {worst:.3g}", worst <= 1)


def oracle_backward_vs_finite_differences() -> CheckResult:
    worst, cases = 0.0, 0
    rng = np.random.default_rng(5)
    for conv in _forward_semantics().values():
        for shape, axis in [((4, 2), 1), ((2, 2, 3), 1), ((3, 1, 2), -1)]:
            x = rng.normal(1.0, 2.0, shape)
            dy = rng.normal(size=shape)
            c = shape[axis]
            gamma = np.linspace(0.5, 2.0, c)
            flags = dict(eps_outside=conv.eps_placement is EpsPlacement.OUTSIDE_SQRT,
                         unbiased=conv.normalize_with is Variance.UNBIASED)
            fd = exact.train_gradients(x, dy, gamma, None, axis=axis, eps=1e-3, **flags)
            inputs = Inputs(x=x, axis=axis, eps=1e-3, gamma=gamma, dy=dy)
            exp = expected(Mode.TRAIN_BACKWARD, inputs, conv, precision_for("float64"))
            for q, ref in zip(("dx", "dgamma", "dbeta"), fd):
                for got, e, b in zip(exp[q].value.ravel(), ref.ravel(), exp[q].bound.ravel()):
                    worst = max(worst, _ratio(abs(float(exact.hp(float(got)) - e)), b))
            cases += 1
    return CheckResult("oracle training backward vs finite differences", cases, f"error/bound {worst:.3g}", worst <= 1)


def _closed_form(conv, momentum, r0: float, b: float, k: int) -> Fraction:
    """The running statistic after k identical batch statistics b, in exact rationals."""
    if momentum is None or conv.zero_debias:
        return Fraction(b)  # a cumulative or a zero-debiased average of k equal values is that value
    w = Fraction(momentum) if conv.momentum_style is MomentumStyle.NEW_WEIGHT else 1 - Fraction(momentum)
    return (1 - w) ** k * Fraction(r0) + (1 - (1 - w) ** k) * Fraction(b)


def running_statistics_closed_form() -> CheckResult:
    k, worst, cases = 5, 0.0, 0
    x = values_with_moments((6, 2), 1, np.array([1.0, -3.0]), np.array([2.0, 0.5]), 7)
    for conv in (c for c in CONVENTIONS.values() if c.tracks_running_stats):
        for momentum in ([0.1, 0.9, None] if conv.cumulative_average else [0.1, 0.9]):
            running = RunningStats(np.array([0.25, 2.0]), np.array([4.0, 0.5]))
            first = forward_train(x, running=running, convention=conv, axis=1, eps=1e-5, momentum=momentum)
            for _ in range(k):
                out = forward_train(x, running=running, convention=conv, axis=1, eps=1e-5, momentum=momentum)
                running = out.running
            batch_var = first.saved_var * (6 / 5 if conv.running_var is Variance.UNBIASED else 1)
            for got, r0, b in [*zip(running.mean, (0.25, 2.0), first.saved_mean), *zip(running.var, (4.0, 0.5), batch_var)]:
                ref = _closed_form(conv, momentum, r0, float(b), k)
                # k updates of 3 roundings each, relative to the larger operand, plus the batch statistic's own
                allowed = (3 * k + 8) * 2.0**-53 * max(abs(r0), abs(float(b)))
                worst = max(worst, _ratio(abs(Fraction(float(got)) - ref), Fraction(allowed)))
            cases += 1
    return CheckResult(f"running statistics after {k} identical batches vs closed form", cases,
                       f"error/bound {worst:.3g}", worst <= 1)


def error_model_accepts_correct_implementations() -> CheckResult:
    worst, cases, skipped = 0.0, 0, []
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        try:
            x = values_with_moments((64, 3), 1, np.array([0.5, 100.0, -1e3]), np.array([1.0, 1.0, 1.0]), 8, dtype)
        except ImportError:
            skipped.append(dtype)
            continue
        i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(3), beta=np.zeros(3), running=RunningStats.initial(3), momentum=0.1)
        out = plain_numpy.train(x, i.gamma, i.beta, i.running.mean, i.running.var, axis=1, eps=1e-5, new_weight=0.1,
                                compute="float64" if dtype == "float64" else "float32")
        results = judge(Mode.TRAIN_FORWARD, out, i, REFERENCE, precision_for(dtype, summation=NUMPY_PAIRWISE))
        ok = all(c.verdict in (Verdict.CONFORMS, Verdict.ILL_CONDITIONED) for c in results.values())
        worst = max(worst, *(c.max_ratio for c in results.values())) if ok else float("inf")
        cases += 1
    note = f" ({', '.join(skipped)} skipped: ml_dtypes not installed)" if skipped else ""
    return CheckResult("error model: correct two-pass float64/32/16/bf16 conform", cases, f"error/bound {worst:.3g}{note}", worst <= 1)


MISTAKES = [
    ({"running_unbiased": False}, "running_var", "running variance biased instead of unbiased"),
    ({"momentum_reversed": True}, "running_mean", "momentum applied the wrong way round"),
    ({"eps_outside": True}, "y", "eps outside the square root"),
]


def error_model_names_mistakes() -> CheckResult:
    """1,000 values per channel in float32, eps = 1e-3, worst-case (recursive) summation bound."""
    x = values_with_moments((1000, 3), 1, np.array([0.5, -1.0, 2.0]), np.ones(3), 0, "float32")
    i = Inputs(x=x, axis=1, eps=1e-3, gamma=np.ones(3), beta=np.zeros(3), running=RunningStats.initial(3), momentum=0.1)
    least, ok = float("inf"), True
    for switch, quantity, name in MISTAKES:
        out = plain_numpy.train(x, i.gamma, i.beta, i.running.mean, i.running.var, axis=1, eps=1e-3, new_weight=0.1, **switch)
        c = judge(Mode.TRAIN_FORWARD, out, i, REFERENCE, precision_for("float32"))[quantity]
        ok &= c.verdict is Verdict.CONVENTION_DIFFERENCE and c.detail.startswith(name) and c.max_ratio > 10
        least = min(least, c.max_ratio)
    return CheckResult("error model: 3 classic mistakes named, far outside the bound", len(MISTAKES),
                       f"smallest error/bound {least:.3g}", ok)


def error_model_flags_one_pass_variance() -> CheckResult:
    x = values_with_moments((4096, 2), 1, np.array([300.0, -300.0]), np.ones(2), 9, "float32")
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), running=RunningStats.initial(2), momentum=0.1)
    out = plain_numpy.train(x, i.gamma, i.beta, i.running.mean, i.running.var, axis=1, eps=1e-5, new_weight=0.1, one_pass=True)
    c = judge(Mode.TRAIN_FORWARD, out, i, REFERENCE, precision_for("float32", summation=NUMPY_PAIRWISE))["saved_var"]
    return CheckResult("error model: E[x^2]-E[x]^2 at |mean|/std = 300 is an unstable algorithm", 1,
                       f"{c.verdict.value}, error/stable bound {c.max_ratio:.3g}", c.verdict is Verdict.UNSTABLE_ALGORITHM)


def _precision_cases(dtype: str, compute: str, std: float = 1.0, eps_used: float = 1e-5) -> list:
    """(inputs, outputs) of plain_numpy's training forward in `compute` on 32 values per channel (standard deviations
    about `std`), momentum 0.01, eps 1e-5 given and `eps_used` used; three seeds."""
    cases = []
    for seed in range(3):
        means, stds = std * np.array([0.5, -2.0, 4.0]), std * np.array([1.0, 0.5, 2.0])
        x = values_with_moments((32, 3), 1, means, stds, seed, dtype)
        running = RunningStats(np.array([0.3, -1.2, 2.5]), np.array([0.5, 1.5, 3.0]), 2)
        i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.linspace(0.5, 2, 3), beta=np.linspace(-1, 1, 3), running=running,
                   momentum=0.01)
        out = plain_numpy.train(x, i.gamma, i.beta, running.mean, running.var, axis=1, eps=eps_used, new_weight=0.01,
                                compute=compute)
        cases.append((i, {q: np.asarray(v, dtype=np.float64) for q, v in out.items()}))
    return cases


def diagnosis_names_precision_mistakes() -> CheckResult:
    """float16 and bfloat16 computed in their own format (the running update shows it), float64 with eps rounded
    to float32 (var ~ eps, where eps matters): each named by its precision hypothesis under the default (float32 /
    float64 arithmetic) declaration."""
    checks = [(dtype, "running_mean", diagnosis.ARITHMETIC_IN_HALF.name, _precision_cases(dtype, dtype))
              for dtype in ("float16", "bfloat16")]
    checks.append(("float64", "y", diagnosis.EPS_IN_FLOAT32.name,
                   _precision_cases("float64", "float64", std=3e-3, eps_used=float(np.float32(1e-5)))))
    named, ok = [], True
    for dtype, quantity, name, cases in checks:
        d = diagnosis.diagnose(Mode.TRAIN_FORWARD, cases, REFERENCE, precision_for(dtype), [quantity])
        named.append(f"{dtype} {quantity}: {d.text}")
        ok &= d.name == name
    return CheckResult("diagnosis: half-precision arithmetic and float32 eps named, not one-pass", len(checks),
                       "; ".join(named), ok)


CHECKS = (
    oracle_forward_vs_exact,
    oracle_backward_vs_finite_differences,
    running_statistics_closed_form,
    error_model_accepts_correct_implementations,
    error_model_names_mistakes,
    error_model_flags_one_pass_variance,
    diagnosis_names_precision_mistakes,
)


def run_selfcheck() -> list[CheckResult]:
    return [check() for check in CHECKS]
