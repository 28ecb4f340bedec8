"""`bnconf merge`: reports made in different environments as one report, the environment a dimension of its own,
and backends that never shared a process paired from the outputs each run saved (conformance/pair_outputs.py).

- the saved outputs compare exactly as crosscheck.run_pair compares two backends in one process;
- two reports made by `bnconf report` with disjoint backends merge (in-process, seconds);
- bad input (another seed, spec, examples, pair examples; not a report; the same file twice; ...) is one line,
  exit status 2, and leaves the previous merged report in place; a partial input loses nothing;
- the acceptance (slow): one virtual environment with only PyTorch (numpy, hypothesis, ... and torch, nothing
  else) and one with everything, a report made in each, merged.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from bnconf.conformance import pair_outputs
from bnconf.conformance.crosscheck import MATCHES, MODES, PREDICTED, UNEXPECTED, run_pair
from bnconf.conformance.ideal import IdealBackend
from bnconf.reports.cli import main
from bnconf.reports.load import load_report
from bnconf.spec import Mode, convention

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "bnconf.adapters.example_numpy:BACKEND"  # NumPy, PyTorch's functional convention
IDEAL_KERAS = '''
from bnconf.conformance.ideal import IdealBackend
from bnconf.spec import convention

KERAS = IdealBackend(convention("keras.layers.BatchNormalization"))
'''
TORCH = IdealBackend(convention("torch.nn.functional.batch_norm"))
KERAS = IdealBackend(convention("keras.layers.BatchNormalization"))


class _OffByOne(IdealBackend):
    """Keras's convention, but y shifted: a difference no convention predicts."""

    def run(self, mode, r):
        out = super().run(mode, r)
        if out.y is not None:
            out.y = out.y + 1.0
        return out


class _RaisesInBackward(IdealBackend):
    def run(self, mode, r):
        if mode is Mode.TRAIN_BACKWARD:
            raise RuntimeError("no backward kernel")
        return super().run(mode, r)


def _saved(backend, examples: int = 3, seed: int = 0) -> list:
    """`backend`'s rows as another environment's report would hand them over: through JSON."""
    return pair_outputs.read_rows(json.loads(json.dumps(pair_outputs.rows_for(backend, examples, seed, "cpu"))))


def _verdicts(result) -> dict:
    return {r.quantity: r.verdict for r in result.rows}


# ---------------------------------------------------------------- the saved outputs


def test_saved_outputs_compare_as_two_backends_in_one_process():
    torch, keras = _saved(TORCH), _saved(KERAS)
    train = pair_outputs.compare("torch", torch, "keras", keras, Mode.TRAIN_FORWARD)
    assert train.status == "ran"
    verdicts = _verdicts(train)
    assert verdicts["y"] == verdicts["running_mean"] == MATCHES
    assert verdicts["running_var"] == PREDICTED  # Bessel-corrected against biased: the spec's prediction
    row = next(r for r in train.rows if r.quantity == "running_var")
    assert "running variance estimator (predicted" in row.residuals and row.max_relative > 0
    for mode in (Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD):
        result = pair_outputs.compare("torch", torch, "keras", keras, mode)
        assert result.rows and set(_verdicts(result).values()) == {MATCHES}, (mode, result)
    # the same verdicts as run_pair gives the two backends in one process (on its own draws)
    for mode in MODES:
        saved = _verdicts(pair_outputs.compare("t", torch, "k", keras, mode))
        live = _verdicts(run_pair(TORCH, KERAS, mode, 8, 0))
        assert saved and {q: saved[q] for q in live if q in saved} == {q: v for q, v in live.items() if q in saved}


def test_a_difference_no_convention_predicts_is_unexpected():
    result = pair_outputs.compare("torch", _saved(TORCH), "shifted", _saved(_OffByOne(KERAS.convention)),
                                  Mode.TRAIN_FORWARD)
    assert _verdicts(result)["y"] == UNEXPECTED


def test_the_canonical_inputs_depend_on_the_seed_alone():
    torch, keras = _saved(TORCH), _saved(KERAS)
    digests = lambda cases: {c.key: c.digest for c in cases}  # noqa: E731
    assert digests(torch) == digests(keras)  # whatever the backend (and whoever it is paired with)
    assert pair_outputs.rows_for(TORCH, 2, 0, "cpu") == pair_outputs.rows_for(TORCH, 2, 0, "cpu")  # deterministic
    assert digests(_saved(TORCH, seed=1)) != digests(torch)
    # per mode, dtype and rank the backend declares: `examples` cases each
    assert {(c.mode, c.rank) for c in torch} == {(m.value, r) for m in MODES for r in (2, 3, 4, 5)}
    assert len(torch) == 3 * 4 * 3


def test_cases_drawn_differently_are_not_compared():
    torch, keras = _saved(TORCH), _saved(KERAS)
    other = [c.__class__(**{**c.__dict__, "digest": "0" * 16}) for c in keras]
    result = pair_outputs.compare("torch", torch, "keras", other, Mode.TRAIN_FORWARD)
    assert result.status == "not comparable" and "drew different inputs" in result.reason


def test_a_case_that_raises_is_the_pairs_error_and_what_cannot_be_compared_says_why():
    raising = _saved(_RaisesInBackward(KERAS.convention))
    result = pair_outputs.compare("torch", _saved(TORCH), "raising", raising, Mode.TRAIN_BACKWARD)
    assert result.status == "error" and "no backward kernel" in result.reason
    bn2d = IdealBackend(convention("torch.nn.BatchNorm2d"))  # rank 4 only
    bn1d = IdealBackend(convention("torch.nn.BatchNorm1d"))  # ranks 2, 3
    result = pair_outputs.compare("2d", _saved(bn2d, 1), "1d", _saved(bn1d, 1), Mode.TRAIN_FORWARD)
    assert (result.status, result.reason) == ("not comparable", "no common input rank")


def test_rows_are_compact_json_that_keeps_non_finite_values():
    rows = pair_outputs.rows_for(TORCH, 2, 0, "cpu")
    assert len(json.dumps(rows)) < 120_000  # 24 cases of at most 256 values
    a = np.array([[1.5, np.nan], [np.inf, -0.0]])
    assert np.array_equal(pair_outputs.decode(pair_outputs.encode(a, exact_float32=True)), a, equal_nan=True)
    assert pair_outputs.encode(a, exact_float32=True)["dtype"] == "float32"
    assert pair_outputs.encode(a + 1e-12)["dtype"] == "float64"
    bound = np.array([1e-7, 3.3e-16])
    assert np.all(pair_outputs.decode(pair_outputs.encode_bound(bound)) >= bound)  # rounded up, never tighter


# ---------------------------------------------------------------- bnconf merge on reports made here


def _report(out: Path, *args: str) -> dict:
    with redirect_stdout(io.StringIO()):
        code = main(["report", *args, "--examples", "2", "--pair-examples", "2", "--dtype", "float64",
                     "--no-edge-cases", "--no-replicas", "--out", str(out)])
    assert code == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Two reports made by `bnconf report` with disjoint backends (NumPy in one, an ideal Keras in the other),
    as two environments would make them; their paths."""
    root = tmp_path_factory.mktemp("environments")
    (root / "ideal.py").write_text(IDEAL_KERAS)
    start = time.monotonic()
    a = _report(root / "numpy-env", "--backend", EXAMPLE)
    b = _report(root / "keras-env", "--backend", f"{root / 'ideal.py'}:KERAS")
    print(f"two reports made in {time.monotonic() - start:.1f} s")
    assert a["pair_outputs"] and b["pair_outputs"]
    return {"a": root / "numpy-env" / "report.json", "b": root / "keras-env" / "report.json", "root": root}


def _merge(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["merge", *map(str, args)])
    return code, out.getvalue()


def test_two_environments_merge_into_one_report(made, tmp_path, capsys):
    code, text = _merge(made["a"], made["b"], "--out", tmp_path)
    assert code == 0, text
    doc = json.loads((tmp_path / "merged.json").read_text())
    a, b = (json.loads(made[k].read_text()) for k in "ab")
    # the environment is a dimension: one entry per report, labelled by its folder (the stems are both "report")
    assert [e["label"] for e in doc["environments"]] == ["numpy-env", "keras-env"]
    assert doc["environments"][0]["backends"] == {"example.numpy": "conforms"}
    assert doc["environments"][1]["backends"] == {"ideal[keras.layers.BatchNormalization]": "conforms"}
    # every result of every input, each backend "<backend> @ <environment>"
    assert len(doc["cells"]) == len(a["cells"]) + len(b["cells"])
    assert {c["backend"] for c in doc["cells"]} == {"example.numpy @ numpy-env",
                                                     "ideal[keras.layers.BatchNormalization] @ keras-env"}
    # a pair of backends that never shared a process, judged from their saved outputs
    across = [p for p in doc["pairs"] if p["source"].endswith("@ numpy-env") and p["target"].endswith("@ keras-env")]
    assert {p["mode"] for p in across} == {m.value for m in MODES}
    train = next(p for p in across if p["mode"] == "train_forward")
    assert {r["quantity"]: r["verdict"] for r in train["rows"]}["running_var"] == PREDICTED
    assert doc["conforms"] is True and doc["format"] == "bnconf-report/1"
    # every format shows both environments
    md, html = (tmp_path / "merged.md").read_text(), (tmp_path / "merged.html").read_text()
    for page in (md, html, text):
        assert "Backends per environment" in page and "numpy-env" in page and "keras-env" in page
        assert "numpy-env \u00d7 keras-env" in page
    assert load_report((tmp_path / "merged.json").read_text()).environments == doc["environments"]
    assert "pairing 1 backend(s) of numpy-env with 1 of keras-env" in capsys.readouterr().err


def test_labels_are_given_with_path_equals_label(made, tmp_path):
    code, _ = _merge(f"{made['a']}=cpu-box", f"{made['b']}=gpu-box", "--out", tmp_path, "--name", "fleet")
    assert code == 0
    doc = json.loads((tmp_path / "fleet.json").read_text())
    assert [e["label"] for e in doc["environments"]] == ["cpu-box", "gpu-box"]


def test_an_unexpected_difference_across_environments_fails_the_merge(made, tmp_path):
    doc = json.loads(made["b"].read_text())
    for rows in doc["pair_outputs"].values():
        for row in rows:
            y = row.get("quantities", {}).get("y")
            if y:
                y["observed"] = pair_outputs.encode(pair_outputs.decode(y["observed"]) + 1.0)
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(doc))
    code, text = _merge(made["a"], shifted, "--out", tmp_path)
    assert code == 1
    assert "UNEXPECTED difference" in text and "NON-CONFORMANT" in text.splitlines()[-1]
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["conforms"] is False
    assert any(f["verdict"] == UNEXPECTED and "@ shifted" in f["backend"] for f in merged["summary"]["findings"])


def test_a_partial_report_loses_nothing_it_finished(made, tmp_path):
    doc = json.loads(made["b"].read_text())
    doc["status"], doc["cells"] = "interrupted", doc["cells"][:2]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(doc))
    code, text = _merge(made["a"], partial, "--out", tmp_path)
    assert code == 1 and "partial input(s): partial" in text.splitlines()[-1]
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["status"] == "interrupted"
    assert len(merged["cells"]) == len(json.loads(made["a"].read_text())["cells"]) + 2
    assert "INTERRUPTED" in (tmp_path / "merged.md").read_text()


def _edited(made, tmp_path, name: str, edit) -> Path:
    doc = json.loads(made["b"].read_text())
    edit(doc)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path


def _pair_examples(doc: dict) -> None:
    for rows in doc["pair_outputs"].values():
        for row in rows:
            row["examples"] = 3


BAD = {
    "another seed": (lambda d: d.update(seed=7), "the seed differs", "has 0, ", "--seed"),
    "another spec": (lambda d: d.update(spec={"bnconf": "0.0.9", "digest": "0123456789abcdef"}), "the spec differs",
                     "0123456789abcdef (bnconf 0.0.9)", "same bnconf"),
    "no spec": (lambda d: d.pop("spec"), "none (a bnconf before merge)", "same bnconf"),
    "other examples": (lambda d: d.update(examples=9), "the number of examples per cell differs", "has 2, ",
                       "--examples"),
    "other pair examples": (_pair_examples, "the number of pair examples differs", "has 2, ", "--pair-examples"),
    "another format": (lambda d: d.update(format="bnconf-report/2"), "is a bnconf-report/2 report", "rerun"),
    "pair outputs that are not rows": (lambda d: d.update(pair_outputs={"example.numpy": [{"mode": 1}]}),
                                       "the pair outputs of example.numpy cannot be read", "rerun"),
    "a merged report": (lambda d: d.update(environments=[{"label": "x"}, {"label": "y"}]), "already a merged report",
                        "merge the reports"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_reports_not_made_alike_are_one_line_and_exit_2(case, made, tmp_path, capsys):
    edit, *words = BAD[case]
    bad = _edited(made, tmp_path, case.replace(" ", "-"), edit)
    _assert_bad_input([made["a"], bad, "--out", tmp_path], capsys, *words)


def _assert_bad_input(args, capsys, *words) -> None:
    out = Path(args[args.index("--out") + 1])
    (out / "merged.json").write_text("the previous merged report")
    code = main(["merge", *map(str, args)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("bnconf merge: error: ") and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert (out / "merged.json").read_text() == "the previous merged report"  # nothing overwritten


def test_files_that_cannot_be_merged_are_one_line_and_exit_2(made, tmp_path, capsys):
    a = made["a"]
    not_json = tmp_path / "notes.json"
    not_json.write_text("hello")
    not_report = tmp_path / "other.json"
    not_report.write_text('{"results": []}')
    copy = tmp_path / "copy.json"
    shutil.copy(a, copy)
    out = tmp_path / "out"
    out.mkdir()
    for args, words in [
        ([a, not_json], ("is not JSON",)),
        ([a, not_report], ("is not a bnconf report",)),
        ([a, a], ("is given twice",)),
        ([a, copy], ("is the same report as", "identical contents")),
        ([a, tmp_path / "missing.json"], ("no file", "missing.json")),
        ([a], ("two or more reports",)),
        ([f"{a}=x", f"{made['b']}=x"], ("both labelled 'x'", "PATH=LABEL")),
        ([a, f"{made['b']}=has@sign"], ("is not one",)),
    ]:
        _assert_bad_input([*args, "--out", out], capsys, *words)
    # the merged report never replaces an input
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(made["b"], inputs / "merged.json")
    before = (inputs / "merged.json").read_bytes()
    assert main(["merge", str(a), str(inputs / "merged.json"), "--out", str(inputs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "would replace its input" in err and "--out or --name" in err
    assert (inputs / "merged.json").read_bytes() == before


def test_a_report_without_pair_outputs_merges_unpaired_and_says_so(made, tmp_path, capsys):
    bare = _edited(made, tmp_path, "bare", lambda d: d.update(pair_outputs={}))
    code, _ = _merge(made["a"], bare, "--out", tmp_path)
    assert code == 0
    assert "has no saved pair outputs" in capsys.readouterr().err
    doc = json.loads((tmp_path / "merged.json").read_text())
    assert not [p for p in doc["pairs"] if "@ bare" in p["target"] and "@ numpy-env" in p["source"]]


# ---------------------------------------------------------------- the acceptance: two virtual environments

REPORT_ARGS = ("--examples", "2", "--pair-examples", "1", "--dtype", "float64", "--dtype", "float32", "--no-edge-cases",
               "--no-replicas")
TORCH_ONLY = '''
from bnconf.adapters import torch_batchnorm

BACKENDS = [b for b in torch_batchnorm.BACKENDS if b.name in ("torch.nn.functional.batch_norm", "torch.nn.BatchNorm1d")]
'''
EVERYTHING = '''
from bnconf.adapters import tensorflow_nn, torch_batchnorm

BACKENDS = ([b for b in torch_batchnorm.BACKENDS if b.name == "torch.nn.functional.batch_norm"]
            + [b for b in tensorflow_nn.BACKENDS if b.name == "tf.compat.v1.nn.fused_batch_norm[NHWC]"])
'''
# bnconf's dependencies at this interpreter's versions (the same Hypothesis and NumPy draw the same cases), and torch
DEPENDENCIES = ("numpy", "hypothesis", "mpmath", "ml_dtypes", "tabulate", "matplotlib", "torch")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    return done


def _venv(path: Path, system_site_packages: bool) -> tuple[Path, Path]:
    """A virtual environment at `path` (no pip in it): its python and its site-packages folder."""
    _run([sys.executable, "-m", "venv", "--without-pip", *(["--system-site-packages"] if system_site_packages else []),
          path])
    python = path / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    return python, site


def _requirements(names) -> list[metadata.Distribution]:
    """The installed distributions `names` and everything they require (environment markers evaluated, extras
    not taken), each once."""
    from packaging.requirements import Requirement

    seen, todo, out = set(), list(names), []
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        out.append(dist)
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def _install_by_link(site: Path, dists) -> None:
    """`dists` installed into `site` as links to this interpreter's installed files (the files pip would unpack
    from the same wheels: nothing is downloaded or built), and bnconf from this checkout, by its layers."""
    for dist in dists:
        tops = {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    (site / "bnconf").mkdir()
    for layer in ("spec", "adapters", "conformance", "reports", "testing"):
        (site / "bnconf" / layer).symlink_to(ROOT / layer)
    info = site / f"bnconf-{metadata.version('bnconf')}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bnconf\nVersion: {metadata.version('bnconf')}\n")


@pytest.fixture(scope="session")
def torch_only_venv(tmp_path_factory) -> Path:
    """A virtual environment with bnconf, its dependencies and PyTorch, at this interpreter's versions (the same
    Hypothesis and NumPy draw the same cases) and nothing else: no TensorFlow, JAX, Keras or ONNX."""
    pytest.importorskip("torch")
    python, site = _venv(tmp_path_factory.mktemp("venvs") / "torch-only", system_site_packages=False)
    _install_by_link(site, _requirements(DEPENDENCIES))
    return python


@pytest.mark.slow
def test_a_torch_only_environment_and_an_everything_environment_merge(torch_only_venv, tmp_path_factory, tmp_path):
    pytest.importorskip("tensorflow")
    everything, _ = _venv(tmp_path_factory.mktemp("venvs") / "everything", system_site_packages=True)  # bnconf too
    missing = subprocess.run([torch_only_venv, "-c", "import tensorflow"], capture_output=True)
    assert missing.returncode != 0  # the torch-only environment really lacks the other frameworks
    (tmp_path / "torch_only.py").write_text(TORCH_ONLY)
    (tmp_path / "everything.py").write_text(EVERYTHING)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNCONF_")}
    for python, name in ((torch_only_venv, "torch_only"), (everything, "everything")):
        _run([python, "-m", "bnconf.reports.cli", "report", "--backend", f"{tmp_path / name}.py:BACKENDS",
              *REPORT_ARGS, "--out", tmp_path / name], cwd=tmp_path, env=env)
    torch_doc = json.loads((tmp_path / "torch_only" / "report.json").read_text())
    assert "tensorflow" not in torch_doc["environment"] and "torch" in torch_doc["environment"]
    code, text = _merge(tmp_path / "torch_only" / "report.json", tmp_path / "everything" / "report.json",
                        "--out", tmp_path / "merged")
    assert code == 0, text
    doc = json.loads((tmp_path / "merged" / "merged.json").read_text())
    envs = {e["label"]: e for e in doc["environments"]}
    assert set(envs) == {"torch_only", "everything"}
    assert "tensorflow" in envs["everything"]["versions"] and "tensorflow" not in envs["torch_only"]["versions"]
    assert envs["torch_only"]["backends"] == {"torch.nn.functional.batch_norm": "conforms",
                                              "torch.nn.BatchNorm1d": "conforms"}
    # PyTorch from the torch-only environment against TensorFlow's fused kernel from the other: never one process
    fused = [p for p in doc["pairs"] if p["source"] == "torch.nn.functional.batch_norm @ torch_only"
             and p["target"] == "tf.compat.v1.nn.fused_batch_norm[NHWC] @ everything"]
    assert {p["mode"] for p in fused} == {m.value for m in MODES}
    assert all(p["status"] == "ran" and p["rows"] for p in fused), fused
    assert {r["verdict"] for p in fused for r in p["rows"]} <= {MATCHES, PREDICTED}
    same = [p for p in doc["pairs"] if p["source"] == "torch.nn.functional.batch_norm @ torch_only"
            and p["target"] == "torch.nn.functional.batch_norm @ everything"]
    assert same and all(p["status"] == "ran" for p in same)
    assert "torch_only \u00d7 everything" in (tmp_path / "merged" / "merged.md").read_text()
