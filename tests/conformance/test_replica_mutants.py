"""Detection power across replicas: each labelled wrong replica backend (conformance/replica_mutants.py) is caught
on unequal shards and named by `judge_step`; the correct NumPy example (adapters/example_replicas.py) conforms on
equal, unequal and empty shards, one value per replica and large |mean|/std."""

import numpy as np
import pytest

from bnconf.adapters.example_replicas import BACKEND, BACKENDS
from bnconf.adapters.replica_protocol import sharded_request
from bnconf.conformance.arrays import round_to
from bnconf.conformance.replica_mutants import MUTANTS, MutantSyncBatchNorm
from bnconf.spec import InputError, RunningStats
from bnconf.spec.replica_diagnosis import REPLICA_HYPOTHESES, judge_step, recorded_expected
from bnconf.spec.replicas import ShardedInputs, split_rows
from bnconf.spec.verdict import Verdict, compare, quantity_format

DTYPES = ("float64", "float32")


def _sharded(rows, seed=0, dtype="float32", mean=3.0, std=2.0, channels=3, spatial=()) -> ShardedInputs:
    rng = np.random.default_rng(seed)
    x = round_to(rng.normal(mean, std, (sum(rows), channels, *spatial)), dtype)
    dy = round_to(rng.normal(size=x.shape), dtype)
    r = lambda a: round_to(a, dtype)  # noqa: E731
    return ShardedInputs(split_rows(x, rows), 1, 1e-5, r(rng.normal(size=channels)), r(rng.normal(size=channels)),
                         RunningStats(r(rng.normal(size=channels)), r(np.exp(rng.normal(size=channels))), 2), 0.1,
                         split_rows(dy, rows))


def _observed(backend, s: ShardedInputs, dtype: str) -> dict:
    o = backend.step(sharded_request(s, dtype))
    return {"y": np.concatenate(o.y), "dx": np.concatenate(o.dx), "running_mean": np.stack(o.running_mean),
            "running_var": np.stack(o.running_var), "dgamma": o.dgamma, "dbeta": o.dbeta}


def _judge(backend, s, dtype):
    return judge_step(_observed(backend, s, dtype), s, BACKEND.convention, BACKEND.replica, BACKEND.precision(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,kw", [
    ((4, 4), {}), ((2, 6, 3), {}), ((5, 0, 3), {}), ((1, 1, 1, 1), {}), ((7,), {}), ((3, 9, 1, 5), {"spatial": (2, 2)}),
    ((6, 2, 4), {"mean": 1e3, "std": 1e-1}), ((0, 5), {"mean": -50.0, "std": 1e-2}),
], ids=["equal", "unequal", "empty", "one-per-replica", "one-replica", "spatial", "large-mean", "large-mean-empty"])
def test_the_example_conforms(rows, kw, dtype):
    for seed in range(3):
        s = _sharded(rows, seed, dtype, **kw)
        results = _judge(BACKEND, s, dtype)
        assert set(results) == {"y", "running_mean", "running_var", "dx", "dgamma", "dbeta"}
        bad = {q: (c.verdict.value, c.max_ratio, c.detail) for q, c in results.items()
               if c.verdict not in (Verdict.CONFORMS, Verdict.ILL_CONDITIONED)}
        assert not bad, (rows, seed, bad)
        assert any(c.verdict is Verdict.CONFORMS and c.checked for c in results.values())


def test_the_example_declares_the_protocol():
    assert BACKENDS == [BACKEND] and BACKEND.world_sizes == (1, 2, 3, 4)
    assert BACKEND.replica.unequal_shards is None and BACKEND.replica.empty_shard is None
    with pytest.raises(InputError, match="5 replicas"):
        BACKEND.step(sharded_request(_sharded((1, 1, 1, 1, 1)), "float32"))
    with pytest.raises(ValueError, match="at least one value"):
        BACKEND.step(sharded_request(_sharded((0, 0)), "float32"))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.backend.name)
@pytest.mark.parametrize("dtype", DTYPES)
def test_each_mutant_is_caught_and_named_on_unequal_shards(mutant, dtype):
    for seed, rows in enumerate([(2, 6, 3), (5, 2), (3, 8, 2, 4)]):  # n_r > 1: local Bessel stays finite
        s = _sharded(rows, seed, dtype)
        results = _judge(mutant.backend, s, dtype)
        flagged = results[mutant.flags]
        assert flagged.verdict is Verdict.NON_CONFORMANT, (rows, flagged)
        assert flagged.detail.startswith(mutant.diagnosis), (rows, flagged.detail)
        failing = [q for q, c in results.items() if c.verdict is not Verdict.CONFORMS]
        assert all(results[q].detail.startswith(mutant.diagnosis) for q in failing), {q: results[q].detail for q in failing}


def test_count_weighting_mistakes_are_invisible_on_equal_shards():
    """A wrongly weighted combine and a backward divided by W n_r compute the right thing when shards are equal:
    they conform there (so equal-shard tests cannot catch them)."""
    s = _sharded((4, 4, 4), 1)
    for m in MUTANTS:
        if m.backend.mistake.keys() & {"equal_weight_combine", "backward_not_count_weighted"}:
            assert all(c.verdict is Verdict.CONFORMS for c in _judge(m.backend, s, "float64").values()), m.backend.name


def test_recorded_expected_under_a_named_mistake_is_what_the_mutant_returns():
    s = _sharded((2, 6, 3), 2, "float64")
    p = BACKEND.precision("float64")
    for m in MUTANTS:
        exp = recorded_expected(m.diagnosis, s, BACKEND.convention, BACKEND.replica, p, backward=True)
        obs = _observed(m.backend, s, "float64")
        for q, e in exp.items():
            assert compare(q, obs[q], e, quantity_format(q, p)).verdict is Verdict.CONFORMS, (m.diagnosis, q)
    with pytest.raises(ValueError, match="no hypothesis named"):
        recorded_expected("no such mistake", s, BACKEND.convention, BACKEND.replica, p, backward=True)


def test_hypothesis_names_are_unique_and_listed_in_spec():
    from pathlib import Path

    import bnconf.spec

    names = [h.name for h in REPLICA_HYPOTHESES]
    assert len(set(names)) == len(names)
    text = (Path(bnconf.spec.__file__).with_name("SPEC.md")).read_text()
    section = text[text.index("<!-- replica hypotheses -->"):text.index("<!-- end replica hypotheses -->")]
    import re

    assert re.findall(r"^\* \*\*(.+?)\*\*", section, flags=re.M) == names


def test_a_mutant_switch_must_exist():
    with pytest.raises(ValueError, match="unknown switches"):
        MutantSyncBatchNorm("x", no_such_mistake=True)


@pytest.mark.parametrize("observed_as,name", [
    ({"running": "PER_REPLICA"}, "running statistics kept per replica where the policy shares them"),
    ({"semantics": "SYNCHRONIZED"}, "synchronized statistics where per-replica was declared"),
])
def test_per_replica_declarations_name_the_policy_or_semantics_mistake(observed_as, name):
    """DDP's record (per-replica statistics, rank 0's running statistics broadcast) judged against the float64
    reference of another policy or of synchronized statistics."""
    from dataclasses import replace

    from bnconf.spec.replica_conventions import TORCH_DDP
    from bnconf.spec.replicas import Combine, RunningPolicy, Semantics, sharded_step

    s = _sharded((3, 5, 4), 4, "float64")
    actual = replace(TORCH_DDP, running=RunningPolicy[observed_as.get("running", "BROADCAST_RANK0")])
    if "semantics" in observed_as:
        actual = replace(actual, semantics=Semantics.SYNCHRONIZED, combine=Combine.CHAN_MERGE, running=RunningPolicy.GLOBAL)
    observed = sharded_step(s, BACKEND.convention, actual).stacked()
    results = judge_step(observed, s, BACKEND.convention, TORCH_DDP, BACKEND.precision("float64"))
    failing = {q: c.detail for q, c in results.items() if c.verdict is not Verdict.CONFORMS}
    assert failing and all(d.startswith(name) for d in failing.values()), failing


def test_a_single_device_mistake_made_by_every_replica_is_named_across_replicas():
    """spec.diagnosis's hypotheses carried across replicas: every replica putting eps outside the square root."""
    from dataclasses import replace

    from bnconf.spec.conventions import EpsPlacement
    from bnconf.spec.replicas import sharded_step

    s = _sharded((2, 6, 3), 5, "float64")
    wrong = replace(BACKEND.convention, eps_placement=EpsPlacement.OUTSIDE_SQRT)
    observed = sharded_step(replace(s, eps=0.1), wrong, BACKEND.replica).stacked()
    results = judge_step(observed, replace(s, eps=0.1), BACKEND.convention, BACKEND.replica, BACKEND.precision("float64"))
    failing = {q: c for q, c in results.items() if c.verdict is not Verdict.CONFORMS}
    assert failing and all(c.detail.startswith("eps outside the square root") for c in failing.values()), failing
    assert all(c.verdict is Verdict.CONVENTION_DIFFERENCE for c in failing.values())
