"""bnconf's pytest suite in a project that has never seen bnconf's source (issue 15 item 6).

A small project is written into tmp_path: a package with a NumPy backend and a `bnconf.adapters` entry point in its
pyproject, and a tests/ folder with nothing bnconf-specific. The documented command

    python -m pytest --pyargs bnconf.testing --bnconf-backend my_bn.backend:BACKEND

runs there (cwd the project, PYTHONPATH the project: what `pip install -e .` of it would give, without the minute a
fresh virtual environment costs; bnconf's plugin is active through its own `pytest11` entry point) and passes; with
eps moved outside the square root it fails, names the quantity and prints a replay line that reproduces the
failure. And the plugin is inert in the project's own pytest run.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BACKEND = '''
import numpy as np

from bnconf.adapters.protocol import Outputs
from bnconf.spec import Mode, convention


class MyBatchNorm:
    name = "my_bn"
    convention = convention("torch.nn.functional.batch_norm")
    modes = frozenset({Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD})
    dtypes = ("float64", "float32")
    devices = ("cpu",)

    def run(self, mode, r):
        x = r.x.astype(r.dtype)
        axis = r.axis % x.ndim
        reduce = tuple(i for i in range(x.ndim) if i != axis)
        shape = [-1 if i == axis else 1 for i in range(x.ndim)]
        c = x.shape[axis]
        gamma = np.ones(c) if r.gamma is None else r.gamma
        beta = np.zeros(c) if r.beta is None else r.beta
        out = Outputs()
        if mode is Mode.TRAIN_FORWARD:
            n = x.size // max(c, 1)
            if n == 0:
                raise ValueError(f"training needs at least one value per channel, got x of shape {x.shape}")
            if r.running_mean is not None and n < 2:
                raise ValueError(f"a running variance needs 2 or more values per channel, got {n}")
            if r.momentum is not None and not 0 <= r.momentum <= 1:
                raise ValueError(f"momentum must be in [0, 1], got {r.momentum}")
            if r.running_mean is not None and r.momentum is None:  # a refusal; a TypeError would be a crash
                raise ValueError("momentum None (a cumulative average) is not supported")
            mean, var = x.mean(axis=reduce), x.var(axis=reduce)
            if r.running_mean is not None:
                out.running_mean = (1 - r.momentum) * r.running_mean + r.momentum * mean
                out.running_var = (1 - r.momentum) * r.running_var + r.momentum * var * n / (n - 1)
        else:
            mean, var = r.running_mean, r.running_var
        scale = (gamma / np.sqrt(var + r.eps)).astype(r.dtype)
        out.y = (x - mean.reshape(shape).astype(r.dtype)) * scale.reshape(shape) + beta.reshape(shape).astype(r.dtype)
        return out


BACKEND = MyBatchNorm()
'''
CORRECT, BUG = "gamma / np.sqrt(var + r.eps)", "gamma / (np.sqrt(var) + r.eps)"  # the bug: eps outside the root

PYPROJECT = '''
[project]
name = "my-bn"
version = "0.1"
dependencies = ["bnconf"]

[project.entry-points."bnconf.adapters"]
my_bn = "my_bn.backend:BACKEND"
'''

RECORDS = '''
from dataclasses import replace

from bnconf.conformance.records import KnownDiscrepancy
from bnconf.spec import EpsPlacement, convention

RECORDS = (
    KnownDiscrepancy(
        id="my-bn-eps-outside-sqrt", backends="my_bn", quantities=("y",),
        explanation="my_bn divides by sqrt(var) + eps, as its documentation says",
        evidence="my_bn/backend.py: scale = gamma / (np.sqrt(var) + r.eps)",
        convention=replace(convention("torch.nn.functional.batch_norm"), eps_placement=EpsPlacement.OUTSIDE_SQRT),
    ),
)
'''

COMMAND = ["-m", "pytest", "--pyargs", "bnconf.testing", "--bnconf-backend", "my_bn.backend:BACKEND",
           "-p", "no:cacheprovider", "-q", "-rfE", "--bnconf-examples", "3"]


def _write_project(root: Path, backend: str = BACKEND) -> Path:
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "my_bn").mkdir()
    (root / "my_bn" / "__init__.py").write_text("")
    (root / "my_bn" / "backend.py").write_text(backend)
    (root / "my_bn" / "records.py").write_text(RECORDS)
    (root / "tests").mkdir()
    (root / "tests" / "test_trivial.py").write_text(textwrap.dedent('''
        import sys


        def test_trivial():
            assert 1 + 1 == 2


        def test_report_modules():
            print("MODULES", " ".join(sorted(sys.modules)))
        '''))
    return root


@pytest.fixture
def project(tmp_path):
    return _write_project(tmp_path)


@pytest.fixture(scope="module")
def buggy_run(tmp_path_factory):
    """The documented command on the project with eps moved outside the square root, run once for the tests that
    read its outcome: (the project, the run)."""
    root = _write_project(tmp_path_factory.mktemp("buggy"), BACKEND.replace(CORRECT, BUG))
    return root, run(root, *COMMAND)


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BNCONF_", "PYTEST_"))}
    env.update(PYTHONPATH=str(project), BNCONF_PROFILE="default", COLUMNS="300")  # summary lines in full
    return subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)


def test_the_documented_command_passes_a_correct_backend_and_names_each_test(project):
    r = run(project, *[a for a in COMMAND if a != "-q"], "-v")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for test_id in ("test_conformance[my_bn-cpu-float32-train_forward]", "test_conformance[my_bn-cpu-float64-eval_forward]",
                    "test_state_machine[my_bn-cpu-float32]", "test_inference[my_bn-cpu-float64]",
                    "test_edge_case[my_bn-cpu-float32-nan-in-x-train_forward]", "test_edge_records[my_bn-cpu]"):
        assert f"{test_id} PASSED" in out, (test_id, out[-4000:])
    ran = re.findall(r"::(test_\w+\[[^\]]*\]) (?:PASSED|SKIPPED|FAILED)", out)
    assert ran and all("[my_bn-" in t or t == "test_backend_families_load[all]" for t in ran), ran  # its backend alone


def test_an_injected_bug_fails_naming_the_quantity_and_its_replay_line_reproduces_it(buggy_run):
    project, r = buggy_run
    backend = project / "my_bn" / "backend.py"
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-4000:]
    assert "FAILED" in out and "test_conformance[my_bn-cpu-float32-train_forward] - AssertionError: my_bn cpu float32 train_forward: y " in out, out[-4000:]
    assert re.search(r"test_inference\[my_bn-cpu-float64\] - Failed: my_bn cpu float64: eps_placement DIFFERS", out), out[-4000:]
    replays = re.findall(r"bnconf replay (\S+) --backend (\S+)", out)
    assert replays, out[-4000:]
    folder, target = replays[0]
    assert target == "my_bn.backend:BACKEND"
    again = run(project, "-m", "bnconf.reports.cli", "replay", folder, "--backend", target)
    assert again.returncode == 1, again.stdout + again.stderr
    backend.write_text(backend.read_text().replace(BUG, CORRECT))  # fixed: the same case now conforms
    try:
        assert run(project, "-m", "bnconf.reports.cli", "replay", folder, "--backend", target).returncode == 0
    finally:
        backend.write_text(backend.read_text().replace(CORRECT, BUG))  # the shared project keeps its bug


def test_the_project_s_records_explain_its_documented_deviation(buggy_run):
    pytest.importorskip("bnconf.conformance.user_records", reason="bnconf.conformance.user_records is not written yet")
    project, without = buggy_run
    r = run(project, *COMMAND, "--bnconf-records", "my_bn/records.py:RECORDS")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert without.returncode == 1  # without the record: the same command, run once for both tests


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_record_no_case_needed_is_named_stale_also_from_xdist_workers(project, workers):
    """A record of a deviation the backend does not have (a default eps it never uses: the battery passes eps
    explicitly): named in the summary, also when
    the cases ran in pytest-xdist workers and the summary is the controller's."""
    (project / "my_bn" / "unneeded.py").write_text(RECORDS.replace("eps_placement=EpsPlacement.OUTSIDE_SQRT", "default_eps=1e-3"))
    r = run(project, *COMMAND, "--bnconf-records", "my_bn/unneeded.py:RECORDS", *workers)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "bnconf: known discrepancies no case needed in this run (stale?): my-bn-eps-outside-sqrt" in out, out[-4000:]


def test_a_bad_target_is_one_usage_error(project):
    r = run(project, *COMMAND[:-2], "--bnconf-backend", "my_bn.nowhere:BACKEND")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "bnconf: 'my_bn.nowhere:BACKEND': cannot import" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _modules(project: Path, *args: str) -> set[str]:
    r = run(project, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-q", "-s", *args)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr
    return set(re.search(r"MODULES (.*)", r.stdout).group(1).split())


def test_the_plugin_is_inert_in_the_project_s_own_run(project):
    """The project's own tests, with bnconf installed: the plugin is loaded and imports nothing but itself (the
    other installed plugins, e.g. Hypothesis', import what they import either way)."""
    with_plugin, without = _modules(project), _modules(project, "-p", "no:bnconf")
    assert "bnconf.testing.plugin" in with_plugin and "bnconf.testing.plugin" not in without  # the entry point is active
    assert with_plugin - without <= {"bnconf", "bnconf.testing", "bnconf.testing.plugin"}, with_plugin - without
    frameworks = ("torch", "tensorflow", "jax", "keras", "cupy", "flax", "haiku", "equinox")
    assert not {m for m in with_plugin if m.split(".")[0] in frameworks}
