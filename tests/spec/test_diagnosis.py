"""Diagnosis as competing hypotheses (spec/diagnosis.py): the named mistake is the most specific one that explains
every failing case within its own bound; "unexplained" when none does. The labelled wrong backends run through the
battery are in tests/conformance/test_detection_power.py."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bnconf.conformance import plain_numpy
from bnconf.conformance.arrays import values_with_moments
from bnconf.spec import (HYPOTHESES, NUMPY_PAIRWISE, Inputs, Mode, RunningStats, Verdict, convention, diagnose, expected,
                         judge, precision_for)
from bnconf.spec import diagnosis as dx

TORCH = convention("torch.nn.functional.batch_norm")
SPEC = Path(dx.__file__).with_name("SPEC.md")


def _inputs(n=64, seed=3, dtype="float32", **kw) -> Inputs:
    x = values_with_moments((n, 3), 1, np.array([0.5, -2.0, 4.0]), np.array([1.0, 0.5, 2.0]), seed, dtype)
    rng = np.random.default_rng(seed)
    base = dict(x=x, axis=1, eps=1e-3, gamma=rng.normal(size=3), beta=rng.normal(size=3),
                running=RunningStats(rng.normal(size=3), np.exp(rng.normal(size=3)), 2), momentum=0.1)
    return Inputs(**{**base, **kw})


def _values(mode, i: Inputs, conv=TORCH, p=None) -> dict:
    return {q: e.value for q, e in expected(mode, i, conv, p or precision_for("float64")).items()}


# ---------------------------------------------------------------- the list, as data and in SPEC.md


def test_hypothesis_names_are_unique_and_each_covers_something():
    names = [h.name for h in HYPOTHESES]
    assert len(names) == len(set(names)) == len(dx.BY_NAME)
    assert all(h.scope and all(qs for _, qs in h.scope) for h in HYPOTHESES)


def _spec_list() -> list[str]:
    text = SPEC.read_text()
    section = text[text.index("<!-- hypotheses -->"):text.index("<!-- end hypotheses -->")]
    return re.findall(r"^\* \*\*(.+?)\*\*", section, flags=re.M)


def test_spec_md_lists_exactly_the_hypotheses_in_their_order():
    assert _spec_list() == [h.name for h in HYPOTHESES]


# ---------------------------------------------------------------- hand-made cases


def test_gamma_and_beta_swapped_is_named_with_its_residual_and_a_runner_up():
    i = _inputs()
    observed = _values(Mode.TRAIN_FORWARD, replace(i, gamma=i.beta, beta=i.gamma))
    d = diagnose(Mode.TRAIN_FORWARD, [(i, observed)], TORCH, precision_for("float64"), ["y"])
    assert d.name == d.text == "gamma and beta swapped" and d.residual <= 1
    assert d.runner_up and d.runner_up_residual > 1
    assert d.note.startswith(f"error/bound {d.residual:.2g} under it; runner-up: {d.runner_up}, ")


def test_an_error_no_hypothesis_fits_is_unexplained_naming_the_closest():
    i = _inputs()
    observed = _values(Mode.TRAIN_FORWARD, i)
    observed["y"] = observed["y"] * 1.01
    d = diagnose(Mode.TRAIN_FORWARD, [(i, observed)], TORCH, precision_for("float64"), ["y"])
    assert d.name is None and d.text == "unexplained" and d.closest and d.residual > 1
    assert d.note.startswith(f"closest: {d.closest}, error/bound ") and d.verdict is Verdict.NON_CONFORMANT


def test_every_case_must_be_explained():
    """dbeta as a mean in one case, doubled in another: the mean explains the first only, so nothing is named."""
    p = precision_for("float64")
    cases = []
    for seed, factor in ((1, None), (2, 2.0)):
        i = _inputs(seed=seed, dy=np.random.default_rng(seed).normal(size=(64, 3)))
        observed = _values(Mode.TRAIN_BACKWARD, i)
        observed["dbeta"] = observed["dbeta"] / 64 if factor is None else observed["dbeta"] * factor
        cases.append((i, observed))
    assert diagnose(Mode.TRAIN_BACKWARD, cases[:1], TORCH, p, ["dbeta"]).name == dx.DBETA_MEAN.name
    assert diagnose(Mode.TRAIN_BACKWARD, cases, TORCH, p, ["dbeta"]).name is None


def test_a_passing_quantity_rules_out_a_hypothesis_that_would_change_it():
    """saved_var holding the unbiased variance is what normalizing with it would return too, but y (right) says
    the normalization was not: the narrower claim about saved_var alone is named, the other is contradicted."""
    i = _inputs(n=8)
    observed = _values(Mode.TRAIN_FORWARD, i)
    observed["saved_var"] = observed["saved_var"] * 8 / 7
    d = diagnose(Mode.TRAIN_FORWARD, [(i, observed)], TORCH, precision_for("float64"), ["saved_var"])
    assert d.name == dx.SAVED_VAR_UNBIASED.name
    assert d.runner_up == "normalized with the unbiased variance" and "but saved_invstd, y contradict it" in d.note


def test_a_model_undefined_for_a_case_does_not_explain_it():
    """One value per channel: the unbiased variance is undefined (InputError inside), the hypothesis just fails."""
    i = _inputs(n=1, running=None)
    observed = _values(Mode.TRAIN_FORWARD, i)
    observed["saved_var"] = observed["saved_var"] + 1.0
    ranked = dx._ranked(dx._evidence([dx.SAVED_VAR_UNBIASED], Mode.TRAIN_FORWARD, [(i, observed)], [set()], TORCH,
                                     precision_for("float64"), ["saved_var"]), ["saved_var"])
    assert ranked[0].fit == dx.NO_FIT and not ranked[0].explains


def test_eps_held_in_float32_on_float64_data_is_named_so_not_a_one_pass_variance():
    i = _inputs(dtype="float64", eps=1e-5)
    i = replace(i, x=i.x * 1e-3)  # var ~ eps: eps matters
    out = plain_numpy.train(i.x, i.gamma, i.beta, i.running.mean, i.running.var, axis=1, eps=float(np.float32(1e-5)),
                            new_weight=0.1, compute="float64")
    results = judge(Mode.TRAIN_FORWARD, out, i, TORCH, precision_for("float64"))
    assert results["y"].verdict is Verdict.PRECISION_DIFFERENCE
    assert results["y"].detail.startswith(dx.EPS_IN_FLOAT32.name), results["y"].detail
    d = diagnose(Mode.TRAIN_FORWARD, [(i, out)], TORCH, precision_for("float64"), ["y"])
    assert d.name == dx.EPS_IN_FLOAT32.name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_arithmetic_declared_as_float32_is_named_half_precision_never_one_pass(dtype):
    """Everything in the data's half format, momentum 0.01 (the running update's own rounding shows the elementwise
    arithmetic): the running mean is named arithmetic in half precision; no row is called a one-pass variance."""
    p = precision_for(dtype)
    cases = []
    for seed in range(3):
        i = _inputs(n=32, seed=seed, dtype=dtype, momentum=0.01)
        out = plain_numpy.train(i.x, i.gamma, i.beta, i.running.mean, i.running.var, axis=1, eps=1e-3, new_weight=0.01,
                                compute=dtype)
        cases.append((i, {q: np.asarray(v, dtype=np.float64) for q, v in out.items()}))
    assert diagnose(Mode.TRAIN_FORWARD, cases, TORCH, p, ["running_mean"]).name == dx.ARITHMETIC_IN_HALF.name
    for q in ("y", "saved_var", "running_var"):
        assert diagnose(Mode.TRAIN_FORWARD, cases, TORCH, p, [q]).name in (dx.ACCUMULATED_IN_HALF.name,
                                                                          dx.ARITHMETIC_IN_HALF.name, None)


def test_a_one_pass_variance_is_still_an_unstable_algorithm():
    x = values_with_moments((4096, 2), 1, np.array([300.0, -300.0]), np.ones(2), 9, "float32")
    i = Inputs(x=x, axis=1, eps=1e-5, gamma=np.ones(2), beta=np.zeros(2), running=RunningStats.initial(2), momentum=0.1)
    out = plain_numpy.train(x, i.gamma, i.beta, i.running.mean, i.running.var, axis=1, eps=1e-5, new_weight=0.1,
                            one_pass=True)
    c = judge(Mode.TRAIN_FORWARD, out, i, TORCH, precision_for("float32", summation=NUMPY_PAIRWISE))["saved_var"]
    assert c.verdict is Verdict.UNSTABLE_ALGORITHM and c.detail.startswith(dx.ONE_PASS.name)


def test_hypotheses_that_change_nothing_for_a_declaration_do_not_apply():
    p32, p16 = precision_for("float32"), precision_for("float16")
    names = lambda p: {h.name for h in dx.candidates(Mode.TRAIN_FORWARD, TORCH, p, ["y"])}  # noqa: E731
    assert dx.ARITHMETIC_IN_HALF.name not in names(p32) and dx.ARITHMETIC_IN_HALF.name in names(p16)
    assert dx.EPS_IN_FLOAT32.name not in names(p32) and dx.EPS_IN_FLOAT32.name in names(precision_for("float64"))
    assert "normalized with the biased variance" not in names(p32)  # TORCH already normalizes with it
    assert dx.ONE_PASS.name not in {h.name for h in dx.candidates(Mode.EVAL_FORWARD, TORCH, p32, ["y"])}
