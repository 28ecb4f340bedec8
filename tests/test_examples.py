"""The worked examples a new user copies: `adapters/example_numpy.py` conforms in every mode it claims, and
`adapters/example_recorded.py` conforms with its documented deviation recorded, and not without."""

import json

from bnconf.reports.cli import main

RECORDED = "bnconf.adapters.example_recorded"


def test_the_example_conforms_in_training_backward_too(tmp_path):
    assert main(["validate", "bnconf.adapters.example_numpy:BACKEND", "--examples", "10", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "validate.json").read_text())
    backward = [r for c in doc["cells"] if c["mode"] == "train_backward" for r in c["rows"]]
    assert {r["quantity"] for r in backward} == {"dx", "dgamma", "dbeta"} and all(r["examples"] for r in backward)


def test_a_recorded_deviation_conforms_and_shows_its_evidence_and_without_the_record_it_does_not(tmp_path):
    assert main(["validate", f"{RECORDED}:BACKEND", "--examples", "5", "--out", str(tmp_path), "--name", "r"]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    used = [r for r in doc["edge"] if r["recorded"] == "example-momentum-not-checked"]
    assert used and all(r["case"] == "momentum-outside-unit-interval" for r in used)
    assert "example-momentum-not-checked" in (tmp_path / "r.md").read_text()
    assert main(["validate", f"{RECORDED}:UNRECORDED", "--examples", "5", "--out", str(tmp_path), "--name", "u"]) == 1
    edge = json.loads((tmp_path / "u.json").read_text())["edge"]
    assert [r["case"] for r in edge if not r["agrees"] and not r["recorded"]] and all(
        r["case"] == "momentum-outside-unit-interval" for r in edge if not r["agrees"] and not r["recorded"])
