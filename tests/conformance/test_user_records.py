"""A user's own records: a third-party backend's documented deviations, recorded on the backend or in a records
file (`--records`), checked like bnconf's (conformance/user_records.py, known.discrepancies_for).

The third-party backend (tests/fixtures/third_party.py) keeps eps as a float32 attribute and accepts momentum
1.5: with both deviations recorded it conforms (exit 0), with either record removed it does not (exit 1); a
record no case needs is STALE; a records file that does not import, or a record naming a quantity, mode, dtype
or edge case that does not exist, is bad input (exit 2, one line).
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bnconf.conformance import known
from bnconf.conformance.known import DISCREPANCIES, EDGE_RECORDS, discrepancies_for, edge_records_for
from bnconf.conformance.records import KnownDiscrepancy, RecordedCase, matches
from bnconf.conformance.user_records import (
    RecordsError, UserRecords, attach_records, check_records, load_records, prepare_records,
)
from bnconf.reports.cli import main
from bnconf.spec import Inputs, Mode, RunningStats, convention, precision_for

FIXTURE = Path(__file__).parents[1] / "fixtures" / "third_party.py"
QUICK = ["--examples", "5", "--pair-examples", "0"]


def validate(tmp_path, target: str, *records: str, isolated: bool = True) -> tuple[int, dict]:
    argv = ["validate", f"{FIXTURE}:{target}", *QUICK, "--out", str(tmp_path), "--name", "v"]
    argv += [a for r in records for a in ("--records", f"{FIXTURE}:{r}")]
    code = main(argv + ([] if isolated else ["--no-isolation"]))
    return code, json.loads((tmp_path / "v.json").read_text())


def _uses(doc) -> dict:
    return {d["id"]: d for d in doc["discrepancies"]}


# ---------------------------------------------------------------- the deviations recorded, and removed


@pytest.mark.parametrize("isolated", [True, False], ids=["isolated", "in-process"])
def test_a_third_party_backend_with_its_own_records_conforms_and_the_report_shows_their_evidence(tmp_path, isolated):
    code, doc = validate(tmp_path, "DOCUMENTED", isolated=isolated)
    assert code == 0
    eps = _uses(doc)["thirdparty-eps-float32"]
    assert eps["status"] == "in use" and eps["needed"] > 0 and eps["source"] == "backend"
    assert "float32 attribute" in eps["explanation"] and "bn.py:31" in eps["evidence"]
    (edge,) = [r for r in doc["edge_records"] if r["id"] == "thirdparty-momentum-not-checked"]
    assert edge["source"] == "backend" and edge["status"].startswith("in use") and "bn.py:38" in edge["evidence"]
    md = (tmp_path / "v.md").read_text()
    assert "## Known discrepancies" in md and "thirdparty-eps-float32" in md and "## Recorded edge behaviours" in md
    assert "bn.py:31" in (tmp_path / "v.html").read_text()  # the evidence: in the full tables


def test_the_same_records_from_a_records_file_conform_with_the_file_as_their_source(tmp_path):
    code, doc = validate(tmp_path, "BACKEND", "RECORDS")
    assert code == 0
    assert _uses(doc)["thirdparty-eps-float32"]["source"] == f"{FIXTURE}:RECORDS"
    assert {r["id"]: r["source"] for r in doc["edge_records"]}["thirdparty-momentum-not-checked"] == f"{FIXTURE}:RECORDS"


@pytest.mark.parametrize("target, records, finding", [
    ("BACKEND", (), "float64"),  # nothing recorded
    ("BACKEND", ("MOMENTUM_ONLY",), "float64 eval_forward y: NON-CONFORMANT"),  # the eps record removed
    ("MOMENTUM_RECORD_ONLY", (), "float64 eval_forward y: NON-CONFORMANT"),
    ("BACKEND", ("EPS_ONLY",), "edge case momentum-outside-unit-interval"),  # the momentum record removed
    ("EPS_RECORD_ONLY", (), "edge case momentum-outside-unit-interval"),
])
def test_removing_a_record_makes_the_deviation_a_finding(tmp_path, capsys, target, records, finding):
    code, _ = validate(tmp_path, target, *records)
    assert code == 1
    assert finding in capsys.readouterr().out


def test_a_record_no_case_needs_is_reported_stale(tmp_path):
    code, doc = validate(tmp_path, "BACKEND", "WITH_STALE")
    assert code == 0  # stale is news, not a failure
    stale = _uses(doc)["thirdparty-old-float32-y"]
    assert stale["covered"] > 0 and stale["needed"] == 0 and stale["status"].startswith("STALE")
    assert "STALE" in (tmp_path / "v.md").read_text()


def test_a_record_for_no_backend_of_the_run_is_a_warning_not_an_error(tmp_path, capsys):
    code, doc = validate(tmp_path, "BACKEND", "FOR_ANOTHER_BACKEND")
    assert code == 0
    err = capsys.readouterr().err
    assert "warning" in err and "'other-eps'" in err and "'other.bn'" in err
    assert "other-eps" not in _uses(doc)


def test_a_run_uses_only_the_records_files_it_names(tmp_path):
    """Attachments do not leak from one run to the next in one process."""
    assert validate(tmp_path, "BACKEND", "RECORDS")[0] == 0
    assert validate(tmp_path, "BACKEND", isolated=False)[0] == 1


# ---------------------------------------------------------------- bad records: exit 2, one line


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("bnconf validate: error: "), err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("records, fragments", [
    ("BAD_QUANTITY", ["unknown quantity 'running_std'", "pick from y,"]),
    ("BAD_MODE", ["unknown mode 'train_forward'", "Mode.TRAIN_FORWARD"]),
    ("BAD_CASE", ["unknown edge case 'momentum-too-big'", "momentum-outside-unit-interval"]),
    ("BAD_DTYPE", ["unknown dtype 'float128'", "float64, float32"]),
    ("DUPLICATE", ["two records have the id 'thirdparty-eps-float32'", "its own id"]),
    ("NO_SUCH_ATTRIBUTE", ["has no attribute 'NO_SUCH_ATTRIBUTE'", "records there: ", " RECORDS,"]),
])
def test_a_record_that_does_not_hold_is_bad_input(tmp_path, capsys, records, fragments):
    _one_line_error(capsys, ["validate", f"{FIXTURE}:BACKEND", *QUICK, "--out", str(tmp_path),
                             "--records", f"{FIXTURE}:{records}"], *fragments)
    assert not (tmp_path / "validate.json").exists()  # found before anything ran


@pytest.mark.parametrize("text, fragments", [
    ("raise RuntimeError('boom')\n", ["importing it raised RuntimeError: boom", "fix the records file"]),
    ("def broken(:\n", ["raised SyntaxError", "fix the records file"]),
    ("import bnconf_no_such_package_xyz\n", ["cannot import bnconf_no_such_package_xyz"]),
    ("RECORDS = [1, 2]\n", ["item 0 is a int, not a KnownDiscrepancy or EdgeRecord"]),
])
def test_a_records_file_that_does_not_import_or_hold_records_is_bad_input(tmp_path, capsys, text, fragments):
    path = tmp_path / "records.py"
    path.write_text(text)
    _one_line_error(capsys, ["validate", f"{FIXTURE}:BACKEND", *QUICK, "--out", str(tmp_path),
                             "--records", f"{path}:RECORDS"], *fragments)


def test_a_missing_records_file_and_a_bad_target_are_bad_input(tmp_path, capsys):
    base = ["validate", f"{FIXTURE}:BACKEND", *QUICK, "--out", str(tmp_path), "--records"]
    _one_line_error(capsys, base + [f"{tmp_path}/missing.py:RECORDS"], "no file", "check the path")
    _one_line_error(capsys, base + ["no_colon"], "expected path/to/records.py:ATTRIBUTE")


def test_a_backends_own_record_that_does_not_hold_is_bad_input(tmp_path, capsys):
    path = tmp_path / "own.py"
    path.write_text(f"import sys; sys.path.insert(0, {str(FIXTURE.parent)!r})\n"
                    "from third_party import ThirdPartyBatchNorm, BAD_QUANTITY\n"
                    "BACKEND = ThirdPartyBatchNorm(known_discrepancies=BAD_QUANTITY)\n")
    _one_line_error(capsys, ["validate", f"{path}:BACKEND", *QUICK, "--out", str(tmp_path)],
                    "backend 'thirdparty.numpy'", "unknown quantity 'running_std'")


# ---------------------------------------------------------------- the API


def test_every_built_in_record_holds():
    check_records(DISCREPANCIES, "built-in known discrepancies")
    check_records(EDGE_RECORDS, "built-in edge records")


def test_load_records_splits_a_file_into_discrepancies_and_edge_records():
    r = load_records(f"{FIXTURE}:WITH_STALE")
    assert [d.id for d in r.discrepancies] == ["thirdparty-eps-float32", "thirdparty-old-float32-y"]
    assert [e.id for e in r.edge] == ["thirdparty-momentum-not-checked"]
    assert r.target == f"{FIXTURE}:WITH_STALE"
    with pytest.raises(RecordsError, match="unknown edge case"):
        load_records(f"{FIXTURE}:BAD_CASE")


class _Named:
    def __init__(self, name, **own):
        self.name = name
        self.__dict__.update(own)


def test_the_backends_own_records_then_the_attached_then_the_built_ins_the_users_overriding_bnconfs():
    name = "torch.nn.BatchNorm2d"
    builtin = next(d for d in DISCREPANCIES if matches(name, d.backends))
    own = KnownDiscrepancy(id="own", backends="torch.nn.*", quantities=("y",), explanation="e", evidence="v")
    attached = KnownDiscrepancy(id="attached", backends=name, quantities=("y",), explanation="e", evidence="v")
    elsewhere = KnownDiscrepancy(id="elsewhere", backends="other", quantities=("y",), explanation="e", evidence="v")
    b = _Named(name, known_discrepancies=(own,))
    attach_records([b], UserRecords((attached, elsewhere), (), "mine.py:R"), warn=None)
    found = discrepancies_for(b)
    assert found[:2] == (own, attached) and elsewhere not in found and builtin in found
    assert [s for r, s in known.sourced_discrepancies_for(b)][:3] == ["backend", "mine.py:R", "built-in"]
    i = Inputs(x=np.zeros((4, 3)), axis=1, eps=1e-5)
    from bnconf.conformance.discrepancies import covering
    assert covering(found, name, Mode.TRAIN_FORWARD, "float32", "cpu", i) is own  # the user's first
    assert edge_records_for(_Named("no.such.backend")) == ()


def test_a_user_record_may_not_reuse_a_built_in_id_for_the_same_backend():
    builtin = next(d for d in DISCREPANCIES if matches("torch.nn.BatchNorm2d", d.backends))
    clash = KnownDiscrepancy(id=builtin.id, backends="torch.nn.*", quantities=("y",), explanation="e", evidence="v")
    b = _Named("torch.nn.BatchNorm2d")
    with pytest.raises(RecordsError, match=f"id '{builtin.id}'.*built-in"):
        attach_records([b], UserRecords((clash,), (), "clash.py:R"), warn=None)
    assert known.attached_sources(b) == []  # nothing left attached
    with pytest.raises(RecordsError, match="its own id"):
        prepare_records([_Named("torch.nn.BatchNorm2d", known_discrepancies=(clash,))], warn=None)


# ---------------------------------------------------------------- one rule for a record's unchecked channels


def test_unchecked_channels_are_applied_the_same_way_by_the_battery_and_the_cross_framework_table():
    """A record leaving channel 0 unchecked: judge compares channels 1 and 2 only (a wrong channel 0 passes, a
    wrong channel 1 does not), and the oracle's values for every channel mark channel 0 as making no claim."""
    conv, p = convention("torch.nn.functional.batch_norm"), precision_for("float64")
    x = np.random.default_rng(1).normal(size=(6, 3))
    record = KnownDiscrepancy(id="r", backends="*", quantities=("y",), explanation="e", evidence="v",
                              unchecked=lambda i: np.array([True, False, False]))
    i = Inputs(x=x, axis=1, eps=1e-5, running=RunningStats.initial(3), momentum=0.1)
    right = RecordedCase.declared(i, {}, conv, p).expected(Mode.TRAIN_FORWARD)["y"].value

    def verdicts(y):
        return record.apply(i, {"y": y}, conv, p).judge(Mode.TRAIN_FORWARD)["y"].verdict.value

    wrong0, wrong1 = right.copy(), right.copy()
    wrong0[:, 0] += 1.0
    wrong1[:, 1] += 1.0
    assert verdicts(wrong0) == "conforms" and verdicts(wrong1) != "conforms"
    e = record.apply(i, {}, conv, p).expected(Mode.TRAIN_FORWARD)["y"]
    assert e.ill[:, 0].all() and not e.ill[:, 1:].any()
    from bnconf.conformance import crosscheck
    from bnconf.conformance.ideal import IdealBackend

    ideal = IdealBackend(conv)
    ideal.known_discrepancies = (record,)
    values, rid = crosscheck._expected(ideal, Mode.TRAIN_FORWARD, i, "float64", "cpu", p)
    assert rid == "r" and values["y"].ill[:, 0].all() and not values["y"].ill[:, 1:].any()
    nothing = KnownDiscrepancy(id="n", backends="*", quantities=("y",), explanation="e", evidence="v",
                               unchecked=lambda i: np.ones(3, bool))
    assert nothing.apply(i, {"y": wrong1}, conv, p).judge(Mode.TRAIN_FORWARD) == {}


SHIFTED = '''"""thirdparty.numpy's deviation made big: y has beta + 1 (recorded below), and running_mean is off by 1 (not)."""
from dataclasses import replace

import numpy as np

from bnconf.adapters.protocol import Outputs
from bnconf.conformance.records import KnownDiscrepancy
from bnconf.spec import Mode, convention


def _plus_one(i):
    c = i.x.shape[i.axis % i.x.ndim]
    return replace(i, beta=(np.zeros(c) if i.beta is None else i.beta) + 1)


RECORDS = (KnownDiscrepancy(
    id="shifted-beta", backends="shifted.numpy", quantities=("y",), modes=(Mode.TRAIN_FORWARD,),
    explanation="y is shifted by one: beta is read as beta + 1.", evidence="shifted.py: `beta + 1`", adjust=_plus_one),)


class Shifted:
    name = "shifted.numpy"
    convention = convention("torch.nn.functional.batch_norm")
    modes = frozenset({Mode.TRAIN_FORWARD})
    dtypes = ("float64",)
    devices = ("cpu",)

    def run(self, mode, r):
        x, axis = r.x, r.axis % r.x.ndim
        reduce = tuple(i for i in range(x.ndim) if i != axis)
        shape = [-1 if i == axis else 1 for i in range(x.ndim)]
        c = x.shape[axis]
        gamma = np.ones(c) if r.gamma is None else r.gamma
        beta = (np.zeros(c) if r.beta is None else r.beta) + 1
        n = x.size // max(c, 1)
        if n == 0 or (r.running_mean is not None and n < 2):
            raise ValueError(f"too few values per channel in x of shape {x.shape}")
        mean, var = x.mean(axis=reduce), x.var(axis=reduce)
        out = Outputs(y=(x - mean.reshape(shape)) * (gamma / np.sqrt(var + r.eps)).reshape(shape) + beta.reshape(shape))
        if r.running_mean is not None:
            out.running_mean = (1 - r.momentum) * r.running_mean + r.momentum * mean + 1
            out.running_var = (1 - r.momentum) * r.running_var + r.momentum * var * n / (n - 1)
        return out


BACKEND = Shifted()
'''


@pytest.mark.parametrize("isolated", [True, False], ids=["isolated", "in-process"])
def test_a_replay_line_of_a_run_with_records_judges_with_them(tmp_path, capsys, isolated):
    import shlex

    path = tmp_path / "shifted.py"
    path.write_text(SHIFTED)
    records = f"{path}:RECORDS"
    argv = ["report", "--backend", f"{path}:BACKEND", "--records", records, "--no-edge-cases", *QUICK,
            "--examples", "8", "--out", str(tmp_path), "--name", "r"]
    assert main(argv + ([] if isolated else ["--no-isolation"])) == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    rows = {r["quantity"]: r for c in doc["cells"] for r in c["rows"]}
    assert rows["running_mean"]["verdict"] == "NON-CONFORMANT" and rows["y"]["verdict"] != "NON-CONFORMANT", rows
    line = rows["running_mean"]["replay"]
    argv = shlex.split(line)
    assert argv[-2:] == ["--records", records], line
    folder = Path(argv[2])
    assert json.loads((folder / "case.json").read_text())["records"] == [records]

    capsys.readouterr()
    assert main(argv[1:]) == 1  # the line as printed: judged with the run's records, y is the record's
    out = capsys.readouterr().out
    assert "still fails: running_mean\n" in out and "covered by known discrepancy shifted-beta" in out, out

    without = argv[1:-2]  # the same line without --records: the shifted y is a finding again
    assert main(without) == 1
    out = capsys.readouterr().out
    assert re.search(r"still fails: .*\by\b", out) and "running_mean" in out.splitlines()[-1], out
    assert f"--records {records}" in out  # the note naming the records case.json holds, not loaded unasked

    assert main(["replay", str(folder), "--trust-target"]) == 1  # trusting the folder loads its records too
    assert "still fails: running_mean\n" in capsys.readouterr().out
