"""The spec's edge cases as data: inputs where batch normalization is degenerate, undefined or non-finite,
and the outcome the spec requires for each (SPEC.md §5, whose table `spec_section()` generates).

An `EdgeCase` holds its inputs as rows: `x` of shape (n, C), n values of each of C channels (channel axis 1;
a battery places them on a backend's own rank and channel axis), and per mode an `Expectation`:

  * `refusal`: whether the implementation must raise, may raise, or must not raise. The rule (§5): a result
    that is undefined, where shapes and parameters alone show it, must be refused (a ValueError naming the
    problem, an ArithmeticError, or the framework's invalid-argument error: conformance/refusal.py): that
    costs nothing and turns a silent NaN into a message. A result that is defined but degenerate may be
    refused. Trouble that depends on the values (NaN or Inf in x, a zero variance with eps = 0) cannot be seen
    without reading the data (on an accelerator, a synchronization): there IEEE arithmetic's result, confined
    to the affected channels, is required.
  * `nonfinite`: which elements of which quantities are NaN, +Inf, -Inf or non-finite (NaN or either
    infinity); every element not listed must be finite. Patterns are (n, C) for y and dx, (C,) otherwise.
  * `values`: explicit expected values where the oracle has none (empty tensors); None: the float64 oracle
    (`spec.expected`) under the implementation's convention, whose non-finite elements the patterns restate.
"""

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Callable

import numpy as np

from .conventions import Convention, Variance, new_batch_weight
from .expect import Inputs, Mode
from .oracle import RunningStats

TRAIN_FORWARD, EVAL_FORWARD, TRAIN_BACKWARD, EVAL_BACKWARD = (
    Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD, Mode.EVAL_BACKWARD)
ANY_DTYPE = ("float32", "float64", "float16", "bfloat16")  # the first a backend takes is the one run
X_SHAPED = ("y", "dx")  # quantities shaped like x; the others have one value per channel


class Refusal(Enum):
    """What the implementation may do instead of returning values."""

    REQUIRED = "must raise"
    ALLOWED = "may raise"
    FORBIDDEN = "must not raise"


class Kind(IntEnum):
    """An element's class in a non-finite pattern."""

    FINITE = 0
    NAN = 1
    POS_INF = 2
    NEG_INF = 3
    NONFINITE = 4  # NaN or either infinity: where the IEEE value depends on the algorithm


def kinds(a) -> np.ndarray:
    """The class (FINITE, NAN, POS_INF, NEG_INF) of every element of `a`."""
    a = np.asarray(a, dtype=np.float64)
    k = np.full(a.shape, Kind.FINITE, dtype=np.int8)
    k[np.isnan(a)] = Kind.NAN
    k[a == np.inf] = Kind.POS_INF
    k[a == -np.inf] = Kind.NEG_INF
    return k


def kinds_agree(observed_kinds: np.ndarray, pattern: np.ndarray) -> np.ndarray:
    """Per element: the observed class is the pattern's (NONFINITE accepts NaN and either infinity)."""
    return (observed_kinds == pattern) | ((pattern == Kind.NONFINITE) & (observed_kinds != Kind.FINITE))


def marked(shape: tuple[int, ...], *marks: tuple) -> np.ndarray:
    """A pattern of `shape`, FINITE except at each (index, kind) mark (index as for NumPy: 0, (1, 0), np.s_[:, 0])."""
    p = np.full(shape, Kind.FINITE, dtype=np.int8)
    for index, kind in marks:
        p[index] = kind
    return p


@dataclass(frozen=True)
class Expectation:
    """What the spec requires of one mode on a case."""

    refusal: Refusal | Callable[[Convention], Refusal] = Refusal.FORBIDDEN
    nonfinite: dict[str, np.ndarray] = field(default_factory=dict)  # quantity -> pattern; absent: all finite
    values: Callable[[Inputs], dict[str, np.ndarray]] | None = field(default=None, repr=False)
    unspecified: tuple[str, ...] = ()  # quantities the spec says nothing about here (e.g. saved statistics of no data)

    def refusal_for(self, convention: Convention) -> Refusal:
        return self.refusal(convention) if callable(self.refusal) else self.refusal


@dataclass(frozen=True)
class EdgeCase:
    """One edge case: inputs as rows, and the expectation for each mode it is run in."""

    id: str
    statement: str  # the expected outcome and why, as the spec says it
    x: np.ndarray  # (n, C)
    expect: dict[Mode, Expectation]
    dtypes: tuple[str, ...] = ANY_DTYPE  # where the case means something; the battery runs the first a backend takes
    eps: float = 2.0**-10
    gamma: np.ndarray | None = None
    beta: np.ndarray | None = None
    running: tuple[np.ndarray, np.ndarray] | None = None  # (mean, var), given where the convention tracks them
    momentum: float = 0.5  # w = 0.5 in either momentum style
    dy: np.ndarray | None = None
    applies: Callable[[Convention], bool] = field(default=lambda convention: True, repr=False)
    applies_note: str = ""  # which conventions the case is for, when not all

    @property
    def modes(self) -> tuple[Mode, ...]:
        return tuple(self.expect)

    @property
    def channels(self) -> int:
        return self.x.shape[1]

    def inputs(self, mode: Mode, convention: Convention) -> Inputs:
        """The case's float64 inputs in rows form (axis 1); running statistics where the convention tracks them."""
        running = None
        if self.running is not None and convention.tracks_running_stats:
            running = RunningStats(np.array(self.running[0]), np.array(self.running[1]), RUNNING_SEEN)
        dy = None
        if mode in (TRAIN_BACKWARD, EVAL_BACKWARD):
            dy = np.array(self.dy) if self.dy is not None else np.zeros_like(self.x)
        copy = lambda a: None if a is None else np.array(a, dtype=np.float64)  # noqa: E731
        return Inputs(x=np.array(self.x, dtype=np.float64), axis=1, eps=self.eps, gamma=copy(self.gamma),
                      beta=copy(self.beta), running=running, momentum=self.momentum, dy=dy)

    def pattern(self, mode: Mode, quantity: str) -> np.ndarray:
        """The required classes of `quantity`'s elements in rows form: (n, C) for y and dx, (C,) otherwise."""
        shape = self.x.shape if quantity in X_SHAPED else (self.channels,)
        given = self.expect[mode].nonfinite.get(quantity)
        return np.full(shape, Kind.FINITE, dtype=np.int8) if given is None else given


# ---------------------------------------------------------------- inputs shared by the cases

# n = 4 values of C = 3 channels, dyadic: exact in float16 and bfloat16, and every sum of them exact in float32
X = np.array([[0.5, 1.0, -2.0], [1.5, 3.0, 0.0], [-1.0, 2.0, 4.0], [3.0, -1.0, 1.0]])
DY = np.array([[1.0, -0.5, 2.0], [0.25, 1.0, -1.0], [-2.0, 0.5, 0.75], [0.5, -1.5, 1.0]])
GAMMA, BETA = np.array([1.5, 0.5, -2.0]), np.array([0.25, -1.0, 0.5])
RUNNING = (np.array([0.5, -0.5, 1.0]), np.array([2.0, 0.5, 4.0]))
CONSTANT = 0.75  # channel 0's value in the constant-channel cases
# running statistics that have seen one batch: at 0 a zero-debiased average ignores them (w = 1), and equinox
# reads a fresh state differently (a recorded discrepancy of the main battery, not an edge case)
RUNNING_SEEN = 1
C = (3,)
ROWS = X.shape
AFFINE = dict(gamma=GAMMA, beta=BETA, dy=DY)


def _with(rows: np.ndarray, index, value) -> np.ndarray:
    out = np.array(rows, dtype=np.float64)
    out[index] = value
    return out


def bessel_undefined(convention: Convention, n: int) -> bool:
    """The running variance's batch term is 0/0: Bessel-corrected, n = 1, and no divisor floor."""
    return n == 1 and convention.running_var is Variance.UNBIASED and convention.bessel_divisor_min < 1


def _bessel_unfloored(convention: Convention) -> Refusal:
    return Refusal.REQUIRED if bessel_undefined(convention, 1) else Refusal.ALLOWED


def required_refusal(mode: Mode, inputs: Inputs, convention: Convention) -> str | None:
    """Why the spec requires `inputs` to be refused, from shapes and parameters alone (§5), or None.

    Only a training forward that updates running statistics can be undefined this way: by a momentum whose
    update weight w lies outside [0, 1], or by one value per channel under an unfloored Bessel correction."""
    if mode is not TRAIN_FORWARD or inputs.running is None:
        return None
    if inputs.momentum is not None:
        w = new_batch_weight(convention, inputs.momentum)
        if not 0.0 <= w <= 1.0:
            return (f"momentum {inputs.momentum!r} gives the running statistics the update weight w = {w:g}, "
                    "outside [0, 1]: not a moving average")
    x = np.asarray(inputs.x)
    n = x.size // max(x.shape[inputs.axis], 1)
    if bessel_undefined(convention, n):
        return ("one value per channel: the Bessel-corrected running variance is 0/0; "
                "more than one value per channel is needed in training")
    return None


def _empty_train(i: Inputs) -> dict[str, np.ndarray]:
    out = {"y": np.zeros_like(i.x)}
    if i.running is not None:  # left unchanged: an empty batch carries no statistics
        out.update(running_mean=i.running.mean, running_var=i.running.var)
    return out


def _empty_backward(i: Inputs) -> dict[str, np.ndarray]:
    c = i.x.shape[i.axis]
    return {"dx": np.zeros_like(i.x), "dgamma": np.zeros(c), "dbeta": np.zeros(c)}  # empty sums


def _no_channels(i: Inputs) -> dict[str, np.ndarray]:
    out = {"y": np.zeros_like(i.x), "saved_mean": np.zeros(0), "saved_var": np.zeros(0), "saved_invstd": np.zeros(0)}
    if i.running is not None:
        out.update(running_mean=np.zeros(0), running_var=np.zeros(0))
    return out


_SAVED = ("saved_mean", "saved_var", "saved_invstd")
_NAN_X = _with(X, (1, 0), np.nan)
_INF_X = _with(X, (1, 0), np.inf)
_CONSTANT_X = _with(X, np.s_[:, 0], CONSTANT)
# float16: values near +-300, squares near 9e4 > 65504 = float16's largest; variances 10 and 5
_HALF_X = np.stack([300.0 + np.tile([-4.0, -2.0, 2.0, 4.0], 4), -300.0 + np.tile([-3.0, -1.0, 1.0, 3.0], 4),
                    np.tile([0.5, -1.0, 1.5, -2.0], 4)], axis=1)
_HALF_DY = np.tile(DY, (4, 1))

EDGE_CASES: tuple[EdgeCase, ...] = (
    EdgeCase(
        id="single-value-untracked",
        statement=(
            "Training with one value per channel and no running statistics: x − mean = 0 and the biased variance is "
            "0, so y = beta exactly, saved_var = 0, saved_invstd = 1/sqrt(eps), dx = 0, dgamma = 0 and dbeta = Σ dy; "
            "nothing is undefined, but a batch of one value per channel carries nothing to normalize (the output "
            "ignores x), so an implementation may refuse it (PyTorch raises 'Expected more than 1 value per "
            "channel when training')."
        ),
        x=X[:1], gamma=GAMMA, beta=BETA, dy=DY[:1],
        expect={TRAIN_FORWARD: Expectation(Refusal.ALLOWED), TRAIN_BACKWARD: Expectation(Refusal.ALLOWED)},
    ),
    EdgeCase(
        id="single-value-running",
        statement=(
            "Training with one value per channel while updating running statistics: y = beta and the running mean "
            "moves toward x as usual, but a Bessel-corrected batch variance Σ(x − mean)²/(n − 1) is 0/0, so "
            "where "
            "the convention's running variance is Bessel-corrected without a divisor floor the implementation must "
            "raise (undefined, and visible from the shape alone: writing NaN into the running variance would "
            "silently poison every later eval step); a biased running variance, or TF's floor n/max(n − 1, 1), "
            "gives a batch term of 0 and is defined (then refusing is allowed, as in the untracked case)."
        ),
        x=X[:1], gamma=GAMMA, beta=BETA, running=RUNNING,
        expect={TRAIN_FORWARD: Expectation(_bessel_unfloored)},
        applies=lambda c: c.tracks_running_stats, applies_note="conventions with running statistics",
    ),
    EdgeCase(
        id="constant-channel",
        statement=(
            "A channel whose values are all equal (variance 0) with eps > 0: x − mean = 0 exactly, so y = beta in "
            "that channel, saved_invstd = 1/sqrt(eps), the running variance moves toward 0 and "
            "dx = gamma·(dy − mean(dy))/sqrt(eps); nothing is NaN (the values are dyadic: every summation order "
            "gets the mean and a variance of exactly 0)."
        ),
        x=_CONSTANT_X, running=RUNNING, **AFFINE,
        expect={TRAIN_FORWARD: Expectation(), TRAIN_BACKWARD: Expectation()},
    ),
    EdgeCase(
        id="empty-batch",
        statement=(
            "A batch of 0 values per channel: y (and dx) is an empty array of x's shape; in training the batch mean "
            "is 0/0, so the running statistics must be left unchanged (an empty batch carries no statistics: "
            "updating with NaN would poison them for good) and dgamma = dbeta = 0 (empty sums); an implementation "
            "may refuse to train on an empty batch, but an eval step on one is an ordinary empty computation and "
            "must not raise (PyTorch returns the empty output and leaves its running statistics unchanged)."
        ),
        x=np.zeros((0, 3)), running=RUNNING, gamma=GAMMA, beta=BETA, dy=np.zeros((0, 3)),
        expect={
            TRAIN_FORWARD: Expectation(Refusal.ALLOWED, values=_empty_train, unspecified=_SAVED),
            EVAL_FORWARD: Expectation(Refusal.FORBIDDEN, values=lambda i: {"y": np.zeros_like(i.x)}),
            TRAIN_BACKWARD: Expectation(Refusal.ALLOWED, values=_empty_backward),
        },
    ),
    EdgeCase(
        id="no-channels",
        statement=(
            "An input with 0 channels: there is nothing to normalize, so y is an empty array of x's shape and the "
            "statistics are empty; an implementation may refuse the configuration instead (bnconf's oracle does: "
            "a layer without channels is almost always a mistake), but not crash with an unrelated error (bnconf's "
            "request checks refuse it too, so the battery reaches no framework with it)."
        ),
        x=np.zeros((4, 0)), running=(np.zeros(0), np.zeros(0)), gamma=np.zeros(0), beta=np.zeros(0),
        expect={
            TRAIN_FORWARD: Expectation(Refusal.ALLOWED, values=_no_channels),
            EVAL_FORWARD: Expectation(Refusal.ALLOWED, values=lambda i: {"y": np.zeros_like(i.x)}),
        },
    ),
    EdgeCase(
        id="nan-in-x",
        statement=(
            "A NaN in one element of channel 0 poisons channel 0 alone: in training y, the saved statistics and the "
            "running mean and variance of channel 0 are NaN, dx and dgamma of channel 0 are NaN and dbeta = Σ dy "
            "stays finite; eval is elementwise: only that element of y is NaN, dx (= dy·gamma·s) stays finite and "
            "dgamma of channel 0 is NaN; other channels are unaffected everywhere, and no refusal is required "
            "(finding a NaN needs the values)."
        ),
        x=_NAN_X, running=RUNNING, **AFFINE,
        expect={
            TRAIN_FORWARD: Expectation(nonfinite={
                "y": marked(ROWS, (np.s_[:, 0], Kind.NAN)),
                **{q: marked(C, (0, Kind.NAN)) for q in ("saved_mean", "saved_var", "saved_invstd",
                                                          "running_mean", "running_var")}}),
            EVAL_FORWARD: Expectation(nonfinite={"y": marked(ROWS, ((1, 0), Kind.NAN))}),
            TRAIN_BACKWARD: Expectation(nonfinite={"dx": marked(ROWS, (np.s_[:, 0], Kind.NAN)),
                                                   "dgamma": marked(C, (0, Kind.NAN))}),
            EVAL_BACKWARD: Expectation(nonfinite={"dgamma": marked(C, (0, Kind.NAN))}),
        },
    ),
    EdgeCase(
        id="inf-in-x",
        statement=(
            "+Inf in one element of channel 0: the mean is +Inf and the variance NaN (Inf − Inf), so in training y, "
            "saved_var, saved_invstd and the running variance of channel 0 are NaN, its mean and running mean "
            "non-finite (+Inf by IEEE arithmetic; the NaN an updating mean algorithm gives is accepted), dx and "
            "dgamma of channel 0 NaN, dbeta finite; in eval only that element of y is infinite (+Inf, as "
            "gamma·s > 0), dx stays finite and dgamma of channel 0 is +Inf (its dy is positive); other channels "
            "are unaffected."
        ),
        x=_INF_X, running=RUNNING, **AFFINE,
        expect={
            TRAIN_FORWARD: Expectation(nonfinite={
                "y": marked(ROWS, (np.s_[:, 0], Kind.NAN)),
                **{q: marked(C, (0, Kind.NONFINITE)) for q in ("saved_mean", "running_mean")},
                **{q: marked(C, (0, Kind.NAN)) for q in ("saved_var", "saved_invstd", "running_var")}}),
            EVAL_FORWARD: Expectation(nonfinite={"y": marked(ROWS, ((1, 0), Kind.POS_INF))}),
            TRAIN_BACKWARD: Expectation(nonfinite={"dx": marked(ROWS, (np.s_[:, 0], Kind.NAN)),
                                                   "dgamma": marked(C, (0, Kind.NAN))}),
            EVAL_BACKWARD: Expectation(nonfinite={"dgamma": marked(C, (0, Kind.POS_INF))}),
        },
    ),
    EdgeCase(
        id="eps-zero-constant-channel",
        statement=(
            "eps = 0 with a constant channel: the normalized value is 0/0, so y of that channel is NaN (0·∞), dx "
            "and dgamma there non-finite (NaN by the formula, ±Inf by some evaluation orders) and saved_invstd "
            "+Inf, while its batch statistics (variance 0) and so the running "
            "statistics stay finite and other channels are unaffected; since eps = 0 makes every constant channel "
            "undefined, an implementation may refuse eps = 0 in training (PyTorch 2.13 raises 'batch_norm eps must "
            "be positive during training'), but one that silently uses a larger eps returns y = beta instead."
        ),
        x=_CONSTANT_X, eps=0.0, running=RUNNING, **AFFINE,
        expect={
            TRAIN_FORWARD: Expectation(Refusal.ALLOWED, nonfinite={
                "y": marked(ROWS, (np.s_[:, 0], Kind.NAN)), "saved_invstd": marked(C, (0, Kind.POS_INF))}),
            # dx = gamma·s·(dy − mean(dy)) + (0·∞ terms): NaN by the formula, ±Inf by some evaluation orders
            TRAIN_BACKWARD: Expectation(Refusal.ALLOWED, nonfinite={
                "dx": marked(ROWS, (np.s_[:, 0], Kind.NONFINITE)), "dgamma": marked(C, (0, Kind.NONFINITE))}),
        },
        applies=lambda c: c.eps_min == 0, applies_note="conventions without an eps floor",
    ),
    EdgeCase(
        id="momentum-outside-unit-interval",
        statement=(
            "A momentum whose update weight w is outside [0, 1] (1.5: w = 1.5 where momentum weights the new batch, "
            "w = −0.5 where it weights the old average) must raise: the running statistics are a convex "
            "combination of the old ones and the batch's (§1.3), and w outside [0, 1] extrapolates past them (a "
            "running variance can turn negative), a parameter error visible before any data is seen; most "
            "frameworks accept it silently."
        ),
        x=X, running=RUNNING, momentum=1.5, **AFFINE,
        expect={TRAIN_FORWARD: Expectation(Refusal.REQUIRED)},
        applies=lambda c: c.tracks_running_stats, applies_note="conventions with running statistics",
    ),
    EdgeCase(
        id="gamma-zero",
        statement=(
            "gamma = 0 in channel 0: y = beta exactly there, dx = 0 in that channel, dgamma = Σ dy·z as usual and "
            "the running statistics are unaffected (gamma does not enter them); nothing divides by gamma, so "
            "nothing is NaN."
        ),
        x=X, running=RUNNING, gamma=_with(GAMMA, 0, 0.0), beta=BETA, dy=DY,
        expect={TRAIN_FORWARD: Expectation(), EVAL_FORWARD: Expectation(), TRAIN_BACKWARD: Expectation()},
    ),
    EdgeCase(
        id="float16-squares-overflow",
        statement=(
            "float16 values near ±300, whose squares (≈ 9·10⁴) exceed float16's largest value 65504 while their "
            "variance (10, 5) is small: the precision model computes statistics in float32 (§4.1), so y, the "
            "statistics and the gradients are the oracle's within the float32-arithmetic bound and finite; a "
            "backend that sums squares in half precision overflows to Inf and returns NaN or 0 instead."
        ),
        x=_HALF_X, running=RUNNING, gamma=GAMMA, beta=BETA, dy=_HALF_DY, dtypes=("float16",),
        expect={TRAIN_FORWARD: Expectation(), TRAIN_BACKWARD: Expectation()},
    ),
)

CASES: dict[str, EdgeCase] = {case.id: case for case in EDGE_CASES}


def edge_case(case_id: str) -> EdgeCase:
    try:
        return CASES[case_id]
    except KeyError:
        raise KeyError(f"no edge case {case_id!r}; known: {', '.join(CASES)}") from None


# ---------------------------------------------------------------- the SPEC.md section


def _modes_cell(case: EdgeCase) -> str:
    parts = []
    for mode, e in case.expect.items():
        r = e.refusal
        refusal = "must raise where the running variance is 0/0, else may raise" if callable(r) else r.value
        parts.append(f"{mode.value.replace('_', ' ')} ({refusal})")
    return "; ".join(parts)


def _inputs_cell(case: EdgeCase) -> str:
    n, c = case.x.shape
    parts = [f"n = {n}, C = {c}", f"{case.dtypes[0]} only" if len(case.dtypes) == 1 else "any format"]
    if case.eps != EdgeCase.eps:
        parts.append(f"eps = {case.eps:g}")
    if case.momentum != EdgeCase.momentum:
        parts.append(f"momentum = {case.momentum:g}")
    if case.applies_note:
        parts.append(case.applies_note)
    return ", ".join(parts)


def spec_section() -> str:
    """SPEC.md's "Edge cases" section, generated from the registry (a test keeps the two in step)."""
    lines = [
        "## 5. Edge cases",
        "",
        "Inputs where batch normalization is degenerate, undefined or non-finite, and the outcome the spec",
        "requires; the registry is `edge_cases.py`, the battery `conformance/edge.py`. The rule for refusals: a",
        "result that is **undefined where shapes and parameters alone show it** must be refused: that costs",
        "nothing and turns a silent NaN into a message. A result that is defined but degenerate **may** be",
        "refused. Trouble that depends on the **values** (NaN or Inf in x, a zero variance with eps = 0) cannot be",
        "seen without reading the data (on an accelerator, a synchronization): there the result is IEEE",
        "arithmetic's, confined to the affected channels. A **refusal** is a `ValueError` naming the problem (not",
        "one NumPy raises on the way), an `ArithmeticError` (`ZeroDivisionError`, `FloatingPointError`,",
        "`OverflowError`: the arithmetic asked for is undefined) or the framework's invalid-argument error (a class",
        "named `InvalidArgumentError`, TensorFlow's); any other exception (`TypeError`, `IndexError`,",
        "`RuntimeError`, …) is a **crash**, never an acceptable outcome. Convention inference reads refusals by",
        "the same definition (`conformance/refusal.py`). Edge cases judge **semantics, not precision**: a",
        "different class of outcome (NaN vs finite, +Inf vs −Inf, values vs a required refusal, a refusal where",
        "values are required, a crash) disagrees, and so does a finite value outside the error model's bound for",
        "the dtype (§4.1's loosest arithmetic: elementwise in the data format, reductions accumulated in at least",
        "float32, any order); a value outside the backend's declared bound but within that one agrees \"within",
        "rounding\", with a precision note (the main battery judges precision). Unless a case says otherwise,",
        "inputs are `n = 4` dyadic values of `C = 3` channels (exact in every format), affine parameters on,",
        "running statistics that have seen one batch where the convention tracks them, momentum 0.5 (`w = 0.5`",
        "in either style), eps = 2⁻¹⁰. The battery runs",
        "an any-format case in every dtype `bnconf report` selects that the backend takes (the test suite: the",
        "first of float32, float64, float16, bfloat16), on its smallest rank and first channel axis; the report's",
        "edge-case table shows, per backend and case, whether it agrees (and whether it refused, crashed or",
        "rounded outside its declared bound) or what it does instead, with the recorded explanation",
        "(`conformance/known/edge.py`).",
        "",
        "| case | modes (refusal) | inputs | required outcome |",
        "|---|---|---|---|",
    ]
    for case in EDGE_CASES:
        lines.append(f"| `{case.id}` | {_modes_cell(case)} | {_inputs_cell(case)} | {case.statement} |")
    return "\n".join(lines) + "\n"


__all__ = ["CASES", "EDGE_CASES", "EdgeCase", "Expectation", "Kind", "Refusal", "bessel_undefined", "edge_case",
           "kinds", "kinds_agree", "marked", "required_refusal", "spec_section"]
