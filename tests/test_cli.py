"""The command line: the self-check runs and says what holds; bad usage exits 2; no framework is imported."""

import subprocess
import sys

import pytest

from bnconf.reports.cli import main


def test_selfcheck_passes_and_prints_one_row_per_check(capsys):
    assert main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert "7 of 7 checks hold." in out
    assert "FAILED" not in out


def test_selfcheck_fails_with_exit_1_when_a_check_does_not_hold(monkeypatch, capsys):
    from bnconf.conformance import selfcheck

    broken = selfcheck.CheckResult("a check that does not hold", 1, "error/bound 2", False)
    monkeypatch.setattr(selfcheck, "CHECKS", (lambda: broken,))
    assert main(["selfcheck"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_conventions_lists_every_record(capsys):
    from bnconf.spec import CONVENTIONS

    assert main(["conventions"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CONVENTIONS)


def test_an_unknown_command_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_the_spec_and_the_selfcheck_import_no_framework():
    code = (
        "import sys, bnconf.spec, bnconf.conformance.selfcheck, bnconf.reports.cli; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'flax', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_reader_that_goes_away_is_not_an_error():
    """`bnconf conventions | head -1`: no error line, the exit status of a process stopped by SIGPIPE."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "bnconf.reports.cli", "conventions"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes a line: the reader has gone
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "error" not in err, err
