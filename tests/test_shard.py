"""`bnconf report --shard K/N`: shards 1..N partition the cells exactly, by a stable hash of (backend, device,
dtype, mode) that does not depend on which other backends a machine has; the distributed part and the pairs
run only in shard 1; a bad spec is one line with exit 2."""

from itertools import combinations
from types import SimpleNamespace

import pytest

from bnconf.conformance import selection
from bnconf.reports.cli import UsageError, main, shard_spec
from bnconf.spec import Mode

EXAMPLE = "bnconf.adapters.example_numpy:BACKEND"


def _backend(name: str, devices=("cpu", "cuda"), dtypes=("float64", "float32", "float16", "bfloat16"), **kw):
    return SimpleNamespace(name=name, devices=devices, dtypes=dtypes, modes=frozenset(Mode), **kw)


BACKENDS = [_backend(f"framework-{i}.BatchNorm", param_dtypes={"float16": ("float32",)} if i % 3 == 0 else None)
            for i in range(30)]


def _ids(cells) -> list[tuple]:
    return [(b.name, device, dtype, mode.value) for b, device, dtype, mode in cells]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_the_shards_partition_the_cells(n):
    cells = selection.cells(BACKENDS, [], [])
    shards = [_ids(selection.shard(cells, k, n)) for k in range(1, n + 1)]
    assert sorted(sum(shards, [])) == sorted(_ids(cells))  # the union is every cell ...
    for a, b in combinations(shards, 2):  # ... each in exactly one shard
        assert not set(a) & set(b)
    for k, ids in enumerate(shards, 1):  # in the run's order
        assert ids == [c for c in _ids(cells) if c in set(ids)]
        assert _ids(selection.shard(cells, k, n)) == ids  # deterministic


@pytest.mark.parametrize("n", [2, 4])
def test_the_shards_are_balanced_within_reason(n):
    cells = selection.cells(BACKENDS, [], [])
    mean = len(cells) / n
    sizes = [len(selection.shard(cells, k, n)) for k in range(1, n + 1)]
    assert all(0.8 * mean <= s <= 1.2 * mean for s in sizes), sizes


def test_a_cells_shard_does_not_depend_on_the_other_backends_installed():
    alone = selection.cells(BACKENDS[:1], [], [])
    among = selection.cells(BACKENDS, [], [])
    for k in (1, 2, 3):
        mine = [c for c in _ids(selection.shard(among, k, 3)) if c[0] == BACKENDS[0].name]
        assert _ids(selection.shard(alone, k, 3)) == mine


def test_the_shard_is_stable_across_releases():
    """The hash is SHA-256 of the cell's words, not Python's salted hash(): machines agree, and so do versions
    (a change here would reshuffle every fleet's shards)."""
    cell = (_backend("torch.nn.BatchNorm2d"), "cpu", "float32", Mode.TRAIN_FORWARD)
    assert [selection.shard_of(cell, n) for n in (1, 2, 3, 5, 8, 1000)] == [1, 2, 2, 5, 6, 430]


@pytest.mark.parametrize("spec, expected", [("1/1", (1, 1)), ("2/3", (2, 3)), (" 3/3 ", (3, 3)), ("10/12", (10, 12))])
def test_a_shard_spec_reads_as_k_of_n(spec, expected):
    assert shard_spec(spec) == expected


@pytest.mark.parametrize("spec", ["3/2", "0/2", "a/b", "1", "1/0", "-1/2", "1/2/3", "", "1/ 2x"])
def test_a_bad_shard_spec_is_one_line_with_exit_2(spec, tmp_path, capsys):
    with pytest.raises(UsageError):
        shard_spec(spec)
    assert main(["report", "--backend", EXAMPLE, "--out", str(tmp_path), f"--shard={spec}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"bnconf report: error: --shard must be K/N, shard K of N with 1 <= K <= N, got {spec!r}; "
                          "pick e.g. --shard 1/2"), err


@pytest.mark.parametrize("k", [1, 2])
def test_a_shard_runs_its_slice_and_only_shard_1_the_distributed_part_and_the_pairs(k, tmp_path, monkeypatch, capsys):
    from bnconf.conformance import run

    ran = {}

    def execute(backends, cells, options, *args, **kwargs):
        ran.update(cells=_ids(cells), options=options)

    monkeypatch.setattr(run, "execute", execute)
    monkeypatch.setattr("bnconf.reports.cli._replica_backends", lambda targets: None)
    main(["report", "--backend", EXAMPLE, "--out", str(tmp_path), "--shard", f"{k}/2", "--replicas",
          "--pair-examples", "2", "--no-isolation"])
    everything = selection.cells(selection.backends([EXAMPLE])[0], [], [])
    assert ran["cells"] == _ids(selection.shard(everything, k, 2))
    assert (ran["options"].replicas, ran["options"].pair_examples) == ((True, 2) if k == 1 else (False, 0))
    assert f"shard {k}/2: {len(ran['cells'])} of {len(everything)} cells" in capsys.readouterr().err


def test_a_shard_is_recorded_in_the_report(tmp_path, capsys):
    import json

    from bnconf.reports.cli import main

    code = main(["report", "--backend", "bnconf.adapters.example_numpy:BACKEND", "--shard", "2/3", "--examples", "1",
                 "--pair-examples", "0", "--no-edge-cases", "--no-isolation", "--out", str(tmp_path), "--name", "s"])
    assert code in (0, 1)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["shard"] == "2/3" and "Shard 2/3 of the cells" in (tmp_path / "s.md").read_text()
    from bnconf.reports.load import load_report

    assert load_report((tmp_path / "s.json").read_text()).shard == "2/3"
