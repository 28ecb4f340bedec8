"""Bad input to bnconf itself: one line that names the problem and the fix, exit 2, no traceback
(`--debug` shows one); in Python, one error type, spec.InputError, whose message says what was given
and what is expected."""

import json

import numpy as np
import pytest

from bnconf.adapters.example_numpy import BACKEND
from bnconf.adapters.protocol import Request, check_request
from bnconf.adapters.registry import TargetError
from bnconf.reports import cli
from bnconf.reports.cli import UsageError, main
from bnconf.spec import (
    InputError,
    Inputs,
    Mode,
    RunningStats,
    backward_eval,
    backward_train,
    batch_stats,
    convention,
    expected,
    float_format,
    forward_eval,
    forward_train,
    precision_for,
    update_running_stats,
    update_weight,
)

EXAMPLE = "bnconf.adapters.example_numpy:BACKEND"
TORCH = convention("torch.nn.BatchNorm2d")
X = np.ones((2, 4, 5))
RUNNING = RunningStats(np.zeros(4), np.ones(4))
COMMON = dict(convention=TORCH, axis=1, eps=1e-5)

# ---------------------------------------------------------------- the command line


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
    (["--examples", "0"], ["--examples must be 1 or more, got 0"]),
    (["--pair-examples", "-1"], ["--pair-examples must be 0"]),
    (["--time-limit", "0"], ["--time-limit must be a finite number more than 0"]),
    (["--memory-limit", "inf"], ["--memory-limit must be a finite number more than 0, got inf"]),
    (["--name", "a/b"], ["--name 'a/b' is not a file name stem"]),
])
def test_bad_options_are_one_line_with_exit_2(args, fragments, tmp_path, capsys):
    _one_line_error(capsys, ["report", "--backend", EXAMPLE, "--out", str(tmp_path), *args], *fragments)


def test_an_unwritable_report_folder_is_named_before_the_battery_runs(tmp_path, capsys, monkeypatch):
    from bnconf.conformance import selection

    monkeypatch.setattr(selection, "backends", lambda targets: pytest.fail("the battery was about to run"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _one_line_error(capsys, ["report", "--backend", EXAMPLE, "--out", str(blocker / "sub")],
                    f"cannot write to {blocker / 'sub'}", "pick another folder with --out")


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
                    "holds a corrupt case", "'sideways' is not a valid Mode")
    no_inputs = _saved_case(tmp_path / "no-inputs")
    (no_inputs / "inputs.npz").unlink()
    _one_line_error(capsys, ["replay", str(no_inputs)], "holds a corrupt case (FileNotFoundError")
    _one_line_error(capsys, ["replay", str(_saved_case(tmp_path / "gone", target="bnconf_no_such_module_xyz:B"))],
                    "cannot import bnconf_no_such_module_xyz")
    _one_line_error(capsys, ["replay", str(_saved_case(tmp_path / "renamed", backend="old.name"))],
                    "no longer provides a backend named 'old.name'")


def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path):
    for argv in (["--debug", "report", "--examples", "0"], ["report", "--examples", "0", "--debug"]):
        with pytest.raises(UsageError, match="--examples must be 1 or more"):
            main([*argv, "--out", str(tmp_path)])
    with pytest.raises(TargetError, match="cannot import"):
        main(["validate", "bnconf_no_such_module_xyz:B", "--debug", "--out", str(tmp_path)])


def test_an_unexpected_exception_is_an_internal_error_in_one_line(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "_conventions", bug)
    _one_line_error(capsys, ["conventions"], "internal error: RuntimeError: a bug over two lines; "
                                             "rerun with --debug and report it")
    with pytest.raises(RuntimeError):
        main(["conventions", "--debug"])


def test_a_failing_file_operation_is_one_line(monkeypatch, capsys):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/somewhere/report.md")

    monkeypatch.setattr(cli, "_conventions", denied)
    _one_line_error(capsys, ["conventions"], "cannot write or read /somewhere/report.md: Permission denied")


def test_a_backend_that_raises_is_a_cell_error_not_bad_input(targets, capsys):
    argv = ["validate", f"{targets}/raising.py:BACKEND", "--examples", "1", "--out", str(targets / "out")]
    assert main(argv) == 1
    assert "NON-CONFORMANT" in capsys.readouterr().out


# ---------------------------------------------------------------- the Python API


@pytest.mark.parametrize("call, message", [
    (lambda: forward_train(X, np.ones(3), np.zeros(4), **COMMON),
     "gamma has shape (3,), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))"),
    (lambda: forward_train(X, np.ones(4), np.zeros((4, 1)), **COMMON),
     "beta has shape (4, 1), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))"),
    (lambda: forward_train(X, running=RunningStats(np.zeros(5), np.ones(4)), momentum=0.1, **COMMON),
     "running.mean has shape (5,), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))"),
    (lambda: forward_eval(X, running=RunningStats(np.zeros(4), np.ones(2)), **COMMON),
     "running.var has shape (2,), expected (4,)"),
    (lambda: forward_eval(X, running=RunningStats(np.zeros(4), np.ones(4), -1), **COMMON),
     "running.count (the batches the running statistics have seen) must be an integer >= 0, got -1"),
    (lambda: backward_train(np.ones((2, 4)), X, **COMMON), "dy has shape (2, 4), expected (2, 4, 5): the shape of x"),
    (lambda: backward_eval(np.ones_like(X), X, np.ones(5), RUNNING, **COMMON), "gamma has shape (5,), expected (4,)"),
    (lambda: forward_train(X, convention=TORCH, axis=3, eps=1e-5),
     "channel axis 3 is out of range for x of shape (2, 4, 5): expected an integer from -3 to 2"),
    (lambda: forward_train(X, convention=TORCH, axis=-4, eps=1e-5), "channel axis -4 is out of range"),
    (lambda: batch_stats(X, axis=1.5), "the channel axis must be an integer, got 1.5 (float)"),
    (lambda: batch_stats(np.ones(3), axis=0), "x has shape (3,), expected rank 2 or more"),
    (lambda: batch_stats(X.astype(np.complex64), axis=1), "x must hold real numbers, got dtype complex64"),
    (lambda: batch_stats(X.astype(object), axis=1), "x must hold real numbers, got dtype object"),
    (lambda: forward_train(X, convention=TORCH, axis=1, eps=-1e-5), "eps must be a finite number >= 0, got -1e-05"),
    (lambda: forward_train(X, convention=TORCH, axis=1, eps=float("nan")), "eps must be a finite number >= 0, got nan"),
    (lambda: forward_eval(X, running=RUNNING, convention=TORCH, axis=1, eps=float("inf")), "got inf"),
    (lambda: forward_train(X, convention=TORCH, axis=1, eps=None), "eps must be a number, got None (NoneType)"),
    (lambda: update_weight(TORCH, float("nan"), 1), "momentum must be a finite number, got nan"),
    (lambda: update_running_stats(RunningStats(np.zeros(3), np.ones(3)), batch_stats(X, 1), TORCH, 0.1),
     "running.mean has shape (3,), expected (4,): one value per channel"),
    (lambda: float_format("int8"), "unsupported dtype 'int8': bnconf knows float64"),
])
def test_the_oracle_names_bad_input(call, message):
    with pytest.raises(InputError) as e:
        call()
    assert message in str(e.value)


def test_input_error_is_a_value_error_and_a_type_error():
    assert issubclass(InputError, ValueError) and issubclass(InputError, TypeError)


@pytest.mark.parametrize("changes, mode, message", [
    (dict(gamma=np.ones(3), beta=np.zeros(4)), Mode.TRAIN_FORWARD, "gamma has shape (3,), expected (4,)"),
    (dict(running=RunningStats(np.zeros(4), np.ones(6))), Mode.EVAL_FORWARD, "running.var has shape (6,), expected (4,)"),
    (dict(dy=np.ones((2, 5, 4))), Mode.TRAIN_BACKWARD, "dy has shape (2, 5, 4), expected (2, 4, 5)"),
    (dict(axis=7), Mode.TRAIN_FORWARD, "channel axis 7 is out of range for x of shape (2, 4, 5)"),
    (dict(eps=-0.5), Mode.TRAIN_FORWARD, "eps must be a finite number >= 0, got -0.5"),
    (dict(), "sideways", "mode 'sideways' is not a spec.Mode: expected one of train_forward"),
    (dict(), Mode.TRAIN_BACKWARD, "train_backward needs an upstream gradient"),
])
def test_expected_names_bad_inputs(changes, mode, message):
    inputs = Inputs(**{**dict(x=X, axis=1, eps=1e-5, momentum=0.1), **changes})
    with pytest.raises(InputError) as e:
        expected(mode, inputs, TORCH, precision_for("float32"))
    assert message in str(e.value)


@pytest.mark.parametrize("changes, message", [
    (dict(gamma=np.ones(2), beta=np.zeros(3)), "example.numpy: gamma has shape (2,), expected (3,): one value per channel "
                                                "of x (axis 1 of shape (4, 3))"),
    (dict(running_mean=np.zeros(3), running_var=np.ones(4)), "running_var has shape (4,), expected (3,)"),
    (dict(dtype="float8"), "dtype 'float8' is not a floating-point format bnconf knows: expected one of float64"),
    (dict(dtype="int32"), "dtype 'int32' is not a floating-point format bnconf knows"),
    (dict(eps=float("nan")), "eps must be a finite number >= 0, got nan"),
    (dict(momentum=float("inf")), "momentum must be a finite number, got inf"),
    (dict(axis=1.0), "the channel axis must be an integer, got 1.0"),
    (dict(x=np.ones((4, 3), dtype=complex)), "x must hold real numbers, got dtype complex128"),
])
def test_check_request_names_bad_input(changes, message):
    r = Request(**{**dict(x=np.ones((4, 3)), axis=1, eps=1e-5, dtype="float32", momentum=0.1), **changes})
    with pytest.raises(InputError) as e:
        check_request(BACKEND, Mode.TRAIN_FORWARD, r)
    assert message in str(e.value)
