"""The edge-case registry (spec/edge_cases.py): consistent with the oracle and with SPEC.md, satisfied by a careful
implementation of the spec, and able to catch implementations that get an edge case wrong."""

from dataclasses import replace
from pathlib import Path
import re

import numpy as np
import pytest

from bnconf.adapters.protocol import Outputs
from bnconf.conformance.edge import AGREES, WITHIN_ROUNDING, rounding_precision, run_edge_cases
from bnconf.conformance.refusal import Behaviour
from bnconf.conformance.ideal import IdealBackend, inputs_of
from bnconf.spec import CONVENTIONS, FORMATS, Mode, expected
from bnconf.spec.edge_cases import (
    CASES, EDGE_CASES, X_SHAPED, Kind, Refusal, kinds, kinds_agree, required_refusal, spec_section,
)
from bnconf.spec.error_model import ORACLE_PRECISION

TORCH = CONVENTIONS["torch.nn.functional.batch_norm"]
KERAS = CONVENTIONS["keras.layers.BatchNormalization"]


def _applicable():
    """(case, mode, convention) for every case, each of its modes and each convention it is for."""
    for case in EDGE_CASES:
        for mode in case.modes:
            for conv in CONVENTIONS.values():
                if case.applies(conv):
                    yield case, mode, conv


def _spec_values(case, mode, conv) -> dict[str, np.ndarray] | None:
    """What the spec says each quantity is (None where it requires a refusal, or eval has no running statistics)."""
    exp = case.expect[mode]
    i = case.inputs(mode, conv)
    if exp.refusal_for(conv) is Refusal.REQUIRED:
        return None
    if mode in (Mode.EVAL_FORWARD, Mode.EVAL_BACKWARD) and i.running is None:
        return None
    if exp.values is not None:
        return exp.values(i)
    return {q: e.value for q, e in expected(mode, i, conv, ORACLE_PRECISION).items()}


def test_ids_statements_and_formats_are_well_formed():
    ids = [c.id for c in EDGE_CASES]
    assert len(ids) == len(set(ids))
    for case in EDGE_CASES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", case.id), case.id
        assert case.statement.endswith(".") and "\n" not in case.statement, case.id
        assert case.modes and set(case.dtypes) <= set(FORMATS), case.id
        assert case.x.ndim == 2, case.id


@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: c.id)
def test_patterns_are_the_oracles_non_finite_elements(case):
    """Every NaN/Inf the patterns state is the oracle's (or the explicit values'), under every convention."""
    checked = 0
    for c, mode, conv in _applicable():
        if c is not case:
            continue
        values = _spec_values(case, mode, conv)
        if values is None:
            continue
        for q, v in values.items():
            if q in case.expect[mode].unspecified:
                continue
            pattern = case.pattern(mode, q)
            assert pattern.shape == np.shape(v), (case.id, mode, q)
            assert kinds_agree(kinds(v), pattern).all(), (case.id, conv.name, mode.value, q, v)
            checked += 1
        assert set(case.expect[mode].nonfinite) <= set(mode.quantities), (case.id, mode.value)
    assert checked or all(case.expect[m].refusal is Refusal.REQUIRED for m in case.modes)


def test_patterns_mark_what_the_statements_say():
    nan = CASES["nan-in-x"]
    y = nan.pattern(Mode.TRAIN_FORWARD, "y")
    assert (y[:, 0] == Kind.NAN).all() and (y[:, 1:] == Kind.FINITE).all()
    assert nan.pattern(Mode.EVAL_FORWARD, "y").sum() == Kind.NAN  # one element
    assert (nan.pattern(Mode.EVAL_BACKWARD, "dx") == Kind.FINITE).all()
    assert (nan.pattern(Mode.TRAIN_BACKWARD, "dbeta") == Kind.FINITE).all()
    assert list(CASES["inf-in-x"].pattern(Mode.TRAIN_FORWARD, "running_mean")) == [Kind.NONFINITE, 0, 0]
    # NONFINITE accepts NaN and either infinity, nothing finite
    assert list(kinds_agree(kinds([np.nan, np.inf, -np.inf, 1.0]), np.full(4, Kind.NONFINITE))) == [True] * 3 + [False]


def test_required_refusals_are_the_registrys():
    """The rule as code (`required_refusal`, from shapes and parameters) and the registry's REQUIRED agree."""
    seen = set()
    for case, mode, conv in _applicable():
        reason = required_refusal(mode, case.inputs(mode, conv), conv)
        required = case.expect[mode].refusal_for(conv) is Refusal.REQUIRED
        assert (reason is not None) == required, (case.id, mode.value, conv.name, reason)
        if required:
            seen.add((case.id, conv.name))
    assert ("single-value-running", TORCH.name) in seen and ("single-value-running", KERAS.name) not in seen
    assert ("single-value-running", "tf.compat.v1.nn.fused_batch_norm") not in seen  # TF's Bessel floor
    assert ("momentum-outside-unit-interval", KERAS.name) in seen


def test_spec_md_holds_the_generated_section():
    text = (Path(__file__).resolve().parents[2] / "spec" / "SPEC.md").read_text()
    assert spec_section() in text, "regenerate SPEC.md §5 from spec.edge_cases.spec_section()"


# ---------------------------------------------------------------- a careful implementation, and broken ones


class Careful(IdealBackend):
    """The oracle with the spec's edge rules: refuses what §5 requires, keeps the running statistics of an
    empty batch, and returns 0 for its empty-sum gradients."""

    def __init__(self, convention, dtypes=("float64", "float16")):
        super().__init__(convention)
        self.dtypes = dtypes

    def refusal(self, mode, i):
        return required_refusal(mode, i, self.convention)

    def run(self, mode, r):
        i = inputs_of(r)
        reason = self.refusal(mode, i)
        if reason:
            raise ValueError(reason)
        if r.x.size == 0:
            return Outputs(**CASES["empty-batch"].expect[mode].values(i))
        return super().run(mode, r)


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_a_careful_implementation_agrees_everywhere(name):
    backend = Careful(CONVENTIONS[name])
    outcomes = run_edge_cases(backend)
    assert outcomes and all(o.agrees for o in outcomes), [(o.case, o.mode, o.outcome) for o in outcomes if not o.agrees]
    ran = {o.case for o in outcomes}
    assert {"nan-in-x", "inf-in-x", "empty-batch", "gamma-zero", "float16-squares-overflow"} <= ran
    assert "no-channels" not in ran  # bnconf's request checks refuse 0 channels up front


def test_the_careful_implementation_refuses_where_required_and_only_there():
    by_case = {(o.case, o.mode): o for o in run_edge_cases(Careful(TORCH))}
    refused = {case: by_case[(case, "train_forward")].outcome
               for case in ("momentum-outside-unit-interval", "single-value-running")}
    assert refused["momentum-outside-unit-interval"].startswith("raises ValueError: momentum 1.5")
    assert refused["single-value-running"].startswith("raises ValueError: one value per channel")
    assert by_case[("single-value-untracked", "train_forward")].outcome == AGREES
    keras = {(o.case, o.mode): o for o in run_edge_cases(Careful(KERAS))}
    assert keras[("single-value-running", "train_forward")].outcome == AGREES  # biased running variance: defined


def _outcome(backend, case: str, mode: Mode = Mode.TRAIN_FORWARD):
    return next(o for o in run_edge_cases(backend) if o.case == case and o.mode == mode.value)


class NoNanPropagation(Careful):
    def run(self, mode, r):
        out = super().run(mode, r)
        out.y = None if out.y is None else np.nan_to_num(out.y)
        return out


class NanEverywhere(Careful):
    def run(self, mode, r):
        out = super().run(mode, r)
        if out.y is not None and mode is Mode.TRAIN_FORWARD and np.isnan(r.x).any():
            out.y = np.full_like(out.y, np.nan)
        return out


class SilentMomentum(Careful):
    def refusal(self, mode, i):
        return None if i.momentum == 1.5 else super().refusal(mode, i)


class CrashesOnEmpty(Careful):
    def run(self, mode, r):
        if r.x.size == 0:
            raise IndexError("index 0 is out of bounds for axis 0 with size 0")
        return super().run(mode, r)


class RefusesNan(Careful):
    def run(self, mode, r):
        if np.isnan(r.x).any():
            raise ValueError("x holds NaN")
        return super().run(mode, r)


class ClampsEps(Careful):
    def run(self, mode, r):
        return super().run(mode, replace(r, eps=max(r.eps, 1e-5)))


class HalfSquares(Careful):
    """float16 statistics by E[x^2] - E[x]^2 in float16: the squares of values near 300 overflow."""

    def run(self, mode, r):
        out = super().run(mode, r)
        if r.dtype == "float16" and mode is Mode.TRAIN_FORWARD:
            with np.errstate(all="ignore"):
                h = r.x.astype(np.float16)
                var = (np.mean(h * h, axis=0) - np.mean(h, axis=0) ** 2).astype(np.float64)
                out.y = (r.x - r.x.mean(axis=0)) / np.sqrt(var + r.eps) * r.gamma + r.beta
        return out


def test_an_implementation_that_swallows_nan_is_caught():
    o = _outcome(NoNanPropagation(TORCH), "nan-in-x")
    assert not o.agrees and o.outcome == "y finite (spec: NaN in channel 0)"
    assert not _outcome(NoNanPropagation(TORCH), "inf-in-x", Mode.EVAL_FORWARD).agrees


def test_nan_leaking_into_other_channels_is_caught():
    o = _outcome(NanEverywhere(TORCH), "nan-in-x")
    assert not o.agrees and o.outcome == "y NaN in every channel (spec: NaN in channel 0)"


def test_a_momentum_outside_the_unit_interval_accepted_silently_is_caught():
    o = _outcome(SilentMomentum(TORCH), "momentum-outside-unit-interval")
    assert not o.agrees and o.outcome == "accepts it: returns without raising, running_mean moved with weight w = 1.5"
    o = _outcome(SilentMomentum(KERAS), "momentum-outside-unit-interval")
    assert o.outcome.endswith("w = -0.5")


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_the_bare_oracle_poisons_running_statistics_with_an_empty_batch():
    """IEEE arithmetic on an empty batch gives NaN statistics: the oracle's forward alone is not the edge spec
    (its backward is: an empty dx and empty sums for dgamma and dbeta)."""
    outcomes = {o.mode: o for o in run_edge_cases(IdealBackend(KERAS)) if o.case == "empty-batch"}
    assert outcomes["train_forward"].outcome == ("running_mean NaN in every channel (spec: finite); "
                                                 "running_var NaN in every channel (spec: finite)")
    assert outcomes["eval_forward"].agrees
    assert not outcomes["train_forward"].agrees and outcomes["train_backward"].agrees


def test_a_crash_is_not_a_refusal_and_never_escapes():
    o = _outcome(CrashesOnEmpty(TORCH), "empty-batch")  # a refusal is allowed there, a crash is not
    assert not o.agrees and o.behaviour is Behaviour.CRASH
    assert o.outcome == "raises IndexError: index 0 is out of bounds for axis 0 with size 0 (a crash, not a refusal)"


def test_refusing_a_value_dependent_case_is_caught():
    o = _outcome(RefusesNan(TORCH), "nan-in-x", Mode.EVAL_FORWARD)
    assert not o.agrees and o.behaviour is Behaviour.REFUSAL
    assert o.outcome == "raises ValueError: x holds NaN (a refusal where the spec requires values)"


class DividesByNMinusOne(Careful):
    """Refuses one value per channel the way plain Python arithmetic does: n / (n - 1) with n = 1."""

    def refusal(self, mode, i):
        return None

    def run(self, mode, r):
        n = r.x.size // max(r.x.shape[r.axis], 1)
        if mode is Mode.TRAIN_FORWARD and r.running_mean is not None and n == 1:
            return n / (n - 1)  # ZeroDivisionError
        return super().run(mode, r)


def test_a_zero_division_is_a_refusal_where_one_is_required():
    o = _outcome(DividesByNMinusOne(TORCH), "single-value-running")
    assert o.agrees and o.behaviour is Behaviour.REFUSAL and o.outcome == "raises ZeroDivisionError: division by zero"


class HalfDataFloat16Arithmetic(Careful):
    """The careful implementation with y, dx and the statistics rounded through float16 at every step: a
    correct float16-arithmetic backend that declares float32 arithmetic (the default)."""

    def run(self, mode, r):
        out = super().run(mode, r)
        if r.dtype == "float16":
            for q in ("y", "dx", "dgamma", "saved_invstd"):
                if getattr(out, q) is not None:
                    v = getattr(out, q)
                    setattr(out, q, (v + 3e-4 * np.sign(v) * np.abs(v)).astype(np.float16).astype(np.float64))
        return out


class NormalizesWithTheUnbiasedVariance(Careful):
    """y = (x - mean) / sqrt(var_u + eps): values no rounding explains (var_u = 4/3 var_b at n = 4)."""

    def run(self, mode, r):
        out = super().run(mode, r)
        if mode is Mode.TRAIN_FORWARD and out.y is not None and r.x.shape[0] > 1:
            n = r.x.shape[0]
            out.y = (out.y - r.beta) * np.sqrt((n - 1) / n) + r.beta
        return out


def test_roundings_in_the_dtype_agree_with_a_precision_note():
    """Semantics apart from precision: finite values outside the declared bound but within float16
    arithmetic's agree, and say so; the same backend's classes and refusals are judged as ever."""
    by = {(o.case, o.mode): o for o in run_edge_cases(HalfDataFloat16Arithmetic(TORCH), dtypes=("float16",))}
    o = by[("gamma-zero", "train_forward")]
    assert o.agrees and o.outcome == WITHIN_ROUNDING and "× the declared precision's bound, within float16" in o.precision
    assert all(o.agrees for o in by.values()), [(o.case, o.mode, o.outcome) for o in by.values() if not o.agrees]
    assert by[("single-value-running", "train_forward")].behaviour is Behaviour.REFUSAL
    exact = {(o.case, o.mode): o for o in run_edge_cases(Careful(TORCH), dtypes=("float16",))}
    assert not any(o.precision for o in exact.values()) and all(o.outcome != WITHIN_ROUNDING for o in exact.values())


def test_a_value_no_rounding_explains_differs():
    for dtype in ("float64", "float16"):
        o = next(o for o in run_edge_cases(NormalizesWithTheUnbiasedVariance(TORCH), dtypes=(dtype,))
                 if (o.case, o.mode) == ("gamma-zero", "train_forward"))
        assert not o.agrees and o.outcome.startswith("y off in channel ") and not o.precision, (dtype, o)


def test_the_rounding_precision_is_the_dtypes_loosest():
    from bnconf.spec import precision_for

    p = rounding_precision(precision_for("float16"))
    assert (p.dtype, p.compute, p.accumulate, p.stats) == ("float16", "float16", "float32", "float16")
    p = rounding_precision(precision_for("float16", compute="float16", accumulate="float16"))
    assert p.accumulate == "float16"  # a declared narrower accumulator stays
    assert rounding_precision(precision_for("float64")).compute == "float64"


def test_a_silently_clamped_eps_is_caught():
    o = _outcome(ClampsEps(TORCH), "eps-zero-constant-channel")
    assert not o.agrees and o.outcome.startswith("y finite (spec: NaN in channel 0)")


def test_half_precision_squares_are_caught():
    o = _outcome(HalfSquares(TORCH), "float16-squares-overflow")
    assert o.dtype == "float16" and not o.agrees and "y NaN in" in o.outcome


def test_the_oracle_gradient_of_an_empty_batch_is_empty_sums():
    from bnconf.spec import CONVENTIONS, backward_train

    g = backward_train(np.zeros((0, 3)), np.zeros((0, 3)), convention=CONVENTIONS["torch.nn.BatchNorm2d"], axis=1, eps=1e-5)
    assert g.dx.shape == (0, 3) and np.array_equal(g.dgamma, np.zeros(3)) and np.array_equal(g.dbeta, np.zeros(3))
