"""`bnconf report --replica-backend TARGET`: a user's own replica backend through the distributed part alone."""

import json

from bnconf.reports.cli import main

WRONG_WEIGHTING = '''
from bnconf.conformance.replica_mutants import MutantSyncBatchNorm
BACKEND = MutantSyncBatchNorm("my.sync.bn", equal_weight_combine=True)
'''


def _report(tmp_path, target: str, *extra: str) -> tuple[int, dict]:
    code = main(["report", "--replica-backend", target, "--out", str(tmp_path), "--name", "mine",
                 "--world-sizes", "1,2,3", *extra])
    path = tmp_path / "mine.json"
    return code, json.loads(path.read_text()) if path.exists() else {}


def test_a_correct_replica_backend_alone_conforms(tmp_path, capsys):
    code, report = _report(tmp_path, "bnconf.adapters.example_replicas:BACKENDS")
    assert code == 0
    assert report["cells"] == []  # no single-device battery: only the distributed part
    cells = report["replicas"]
    assert {c["backend"] for c in cells} == {"example.numpy.sync"}
    assert {c["world_size"] for c in cells} == {1, 2, 3}
    assert {c["split"] for c in cells if c["status"] == "ran"} >= {"equal", "unequal", "empty shard"}


def test_a_wrongly_weighted_replica_backend_fails_with_its_mistake_named(tmp_path, capsys):
    (tmp_path / "mine_bn.py").write_text(WRONG_WEIGHTING)
    code, report = _report(tmp_path / "out", f"{tmp_path / 'mine_bn.py'}:BACKEND")
    assert code == 1
    bad = [r for c in report["replicas"] for r in c["rows"] if r["verdict"] == "non-conformant"]
    assert bad and all(c["split"] in ("unequal", "empty shard")
                       for c in report["replicas"] for r in c["rows"] if r["verdict"] == "non-conformant")
    assert any(r["mistake"].startswith("combine weighted as if shards were equal") for r in bad)
    assert "combine weighted as if shards were equal" in (tmp_path / "out" / "mine.md").read_text()


def test_a_replica_target_that_does_not_load_is_bad_input(tmp_path, capsys):
    assert main(["report", "--replica-backend", "no_such_module:BACKEND", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_module" in err[0]
    (tmp_path / "not_a_backend.py").write_text("BACKEND = object()\n")
    assert main(["report", "--replica-backend", f"{tmp_path / 'not_a_backend.py'}:BACKEND", "--out", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
