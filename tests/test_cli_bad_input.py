"""Bad input on the command line: one line on stderr that names the problem and the fix, exit 2, no
traceback (`--debug` shows one); a backend that raises is not bad input (exit 1, a cell error).

The spec functions' InputError messages are tested in tests/spec/test_input_errors.py, check_request's in
tests/adapters/test_check_request.py."""

import json

import numpy as np
import pytest

from bnconf.adapters.registry import TargetError
from bnconf.reports import cli
from bnconf.reports.cli import UsageError, main

EXAMPLE = "bnconf.adapters.example_numpy:BACKEND"


def _one_line_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    command = next(a for a in argv if not a.startswith("-"))
    assert err.startswith(f"bnconf {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, err
    return err


TARGETS = {
    "syntax.py": "def broken(:\n",
    "needs_framework.py": "import bnconf_framework_not_installed_xyz\n",
    "exits.py": "import sys\nsys.exit('usage: exits.py [-h]')\n",
    "no_run.py": "from bnconf.spec import Mode, convention\n"
                 "class NoRun:\n    name = 'no-run'\n    convention = convention('torch.nn.BatchNorm2d')\n"
                 "    modes = frozenset(Mode)\n    dtypes = ('float32',)\n    devices = ('cpu',)\nBACKEND = NoRun()\n",
    "no_convention.py": "class Half:\n    name = 'half'\n    def run(self, mode, r): pass\nBACKEND = Half()\n",
    "variants.py": "from bnconf.adapters.example_numpy import NumpyBatchNorm\n"
                   "class StrModes(NumpyBatchNorm):\n    modes = frozenset({'train_forward'})\n"
                   "class Float8(NumpyBatchNorm):\n    dtypes = ('float8',)\n"
                   "class StrConvention(NumpyBatchNorm):\n    convention = 'torch.nn.BatchNorm2d'\n"
                   "MODES, DTYPES, CONVENTION, CLASS = StrModes(), Float8(), StrConvention(), NumpyBatchNorm\n",
    "raising.py": "from bnconf.adapters.example_numpy import NumpyBatchNorm\n"
                  "class Raising(NumpyBatchNorm):\n    name = 'raising'\n"
                  "    def run(self, mode, r):\n        raise RuntimeError('boom')\nBACKEND = Raising()\n",
}


@pytest.fixture
def targets(tmp_path):
    for name, text in TARGETS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("target, fragments", [
    ("nonsense", ["expected module:attribute or path/to/file.py:attribute"]),
    ("bnconf_no_such_module_xyz:BACKEND", ["cannot import bnconf_no_such_module_xyz", "check the module name"]),
    ("{dir}/missing.py:BACKEND", ["no file", "missing.py", "check the path"]),
    ("{dir}/syntax.py:BACKEND", ["raised SyntaxError", "syntax.py, line 1", "fix the module"]),
    ("{dir}/needs_framework.py:BACKEND", ["cannot import bnconf_framework_not_installed_xyz", "install it"]),
    ("{dir}/exits.py:BACKEND", ["importing it raised SystemExit: usage: exits.py [-h]", "fix the module"]),
    ("bnconf.adapters.example_numpy:NOPE", ["has no attribute 'NOPE'", "backends there: BACKEND"]),
    ("bnconf.spec:CONVENTIONS", ["a dict is not a backend", "needs name, convention, modes, dtypes, devices and run"]),
    ("{dir}/no_run.py:BACKEND", ["backend 'no-run' has no run(mode, request) method", "add one"]),
    ("{dir}/no_convention.py:BACKEND", ["backend 'half' has no attribute 'convention'", "set convention = "]),
    ("{dir}/variants.py:MODES", ["modes must be bnconf.spec.Mode members, got ['train_forward']", "set modes = "]),
    ("{dir}/variants.py:DTYPES", ["unknown dtypes ['float8']", "bnconf knows float64"]),
    ("{dir}/variants.py:CONVENTION", ["'convention' must be a bnconf.spec.Convention record, got str",
                                      "bnconf.spec.convention("]),
    ("{dir}/variants.py:CLASS", ["NumpyBatchNorm is a class, not a backend", "BACKEND = NumpyBatchNorm()"]),
])
def test_a_bad_target_is_one_line_with_exit_2(target, fragments, targets, capsys):
    target = target.format(dir=targets)
    _one_line_error(capsys, ["validate", target, "--out", str(targets / "out")], repr(target), *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["--dtype", "float8"], ["unknown dtype float8", "pick --dtype from float64, float32, float16, bfloat16"]),
    (["--device", "tpu"], ["nothing to run", "device tpu", "they offer devices cpu"]),
    (["--examples", "0"], ["--examples must be between 1 and 100000, got 0", "pick e.g. --examples 5"]),
    (["--examples", "1000000000"], ["--examples must be between 1 and 100000, got 1000000000"]),
    (["--pair-examples", "-1"], ["--pair-examples must be between 0 (no cross-framework table)", "pick e.g."]),
    (["--time-limit", "0"], ["--time-limit must be a finite number more than 0"]),
    (["--memory-limit", "inf"], ["--memory-limit must be a finite number more than 0, got inf"]),
    (["--name", "a/b"], ["--name 'a/b' is not a file name stem"]),
])
def test_bad_options_are_one_line_with_exit_2(args, fragments, tmp_path, capsys):
    _one_line_error(capsys, ["report", "--backend", EXAMPLE, "--out", str(tmp_path), *args], *fragments)


def test_an_unwritable_report_folder_is_named_before_the_battery_runs(tmp_path, capsys, monkeypatch):
    from bnconf.conformance import run

    monkeypatch.setattr(run, "execute", lambda *a, **k: pytest.fail("the battery was about to run"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _one_line_error(capsys, ["report", "--backend", EXAMPLE, "--out", str(blocker / "sub")],
                    f"cannot create the folder {blocker / 'sub'}", "pick another folder with --out")


def test_an_argument_argparse_rejects_is_one_line_with_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--examples", "many"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("bnconf report: error: argument --examples: invalid int value: 'many'; see bnconf report --help")


def _saved_case(folder, **case):
    folder.mkdir()
    np.savez(folder / "inputs.npz", x=np.ones((4, 2)))
    base = dict(backend="example.numpy", target=EXAMPLE, mode="train_forward", dtype="float32", device="cpu",
                axis=1, eps=1e-5, momentum=0.1, running_count=None)
    (folder / "case.json").write_text(json.dumps({**base, **case}))
    return folder


def test_replay_of_a_folder_that_is_missing_or_not_a_saved_case_is_one_line(tmp_path, capsys):
    _one_line_error(capsys, ["replay", str(tmp_path / "missing")], "no folder", "give a folder a failing conformance test saved")
    _one_line_error(capsys, ["replay", str(tmp_path)], "is not a saved case (no case.json there)")


def test_replay_of_a_corrupt_case_is_one_line(tmp_path, capsys):
    corrupt = _saved_case(tmp_path / "corrupt")
    (corrupt / "case.json").write_text("{not json")
    _one_line_error(capsys, ["replay", str(corrupt)], "holds a corrupt case (JSONDecodeError", "save the case again")
    _one_line_error(capsys, ["replay", str(_saved_case(tmp_path / "no-mode", mode="sideways"))],
                    "holds a corrupt case", "field 'mode' must be one of", "got str 'sideways'")
    no_inputs = _saved_case(tmp_path / "no-inputs")
    (no_inputs / "inputs.npz").unlink()
    _one_line_error(capsys, ["replay", str(no_inputs)], "holds a corrupt case (FileNotFoundError")
    gone = str(_saved_case(tmp_path / "gone", target="bnconf_no_such_module_xyz:B"))
    _one_line_error(capsys, ["replay", gone], "bnconf_no_such_module_xyz:B", "--backend")  # nothing imported unasked
    _one_line_error(capsys, ["replay", gone, "--trust-target"], "cannot import bnconf_no_such_module_xyz")
    _one_line_error(capsys, ["replay", str(_saved_case(tmp_path / "renamed", backend="old.name")), "--trust-target"],
                    "no longer provides a backend named 'old.name'")


def test_debug_shows_the_traceback_before_or_after_the_command_and_keeps_exit_2(tmp_path, capsys):
    for argv in (["--debug", "report", "--examples", "0"], ["report", "--examples", "0", "--debug"]):
        assert main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "UsageError: --examples must be between 1 and" in err
    assert main(["validate", "bnconf_no_such_module_xyz:B", "--debug", "--out", str(tmp_path)]) == 2
    assert "TargetError" in capsys.readouterr().err


def test_an_unexpected_exception_is_an_internal_error_in_one_line(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "_conventions", bug)
    _one_line_error(capsys, ["conventions"], "internal error: RuntimeError: a bug over two lines; "
                                             "rerun with --debug and report it")
    assert main(["conventions", "--debug"]) == 2
    assert "RuntimeError: a bug" in capsys.readouterr().err


def test_a_failing_file_operation_is_one_line(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/somewhere/report.md")

    monkeypatch.setattr(cli, "_conventions", denied)
    _one_line_error(capsys, ["conventions"], "cannot write or read /somewhere/report.md: Permission denied")


def test_a_backend_that_raises_is_a_cell_error_not_bad_input(targets, capsys):
    argv = ["validate", f"{targets}/raising.py:BACKEND", "--examples", "1", "--out", str(targets / "out")]
    assert main(argv) == 1
    assert "NON-CONFORMANT" in capsys.readouterr().out
