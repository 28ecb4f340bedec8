"""The report's output folder (reports/output.py) and the escaping of what backends say (reports/render.py,
reports/terminal.py): issue 14, items 9, 10, 13 and 14. No test waits on time: the lock itself and pipes
synchronise the processes."""

import errno
import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest

from bnconf.conformance.battery import CellResult, QuantityRow
from bnconf.reports import figures, output, render
from bnconf.reports.output import OutputError, ReportFolder
from bnconf.reports.terminal import table

ROOT = os.geteuid() == 0

_HOLDER = textwrap.dedent("""
    import sys
    from bnconf.reports.output import ReportFolder
    folder = ReportFolder(sys.argv[1], sys.argv[2])
    folder.claim()
    print("claimed", flush=True)
    sys.stdin.read()  # until the test closes the pipe
    folder.release()
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding <tmp_path>/.t.lock (claimed when this returns)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), "t"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "claimed\n", proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


def _names(folder) -> set[str]:
    return {p.name for p in folder.iterdir()}


# -- 9: one run per folder and name ------------------------------------------------------------------------


def test_a_second_run_with_the_same_out_and_name_refuses_naming_the_first_and_the_fix(tmp_path, holder):
    with pytest.raises(OutputError) as refused:
        ReportFolder(tmp_path, "t").claim()
    message = str(refused.value)
    assert f"pid {holder.pid}" in message and "--out or --name" in message and "wait" in message
    assert "\n" not in message
    assert not any(p.name.startswith(".t.") and p.name.endswith(".tmp") for p in tmp_path.iterdir())

    holder.stdin.close()  # the first run ends: its lock file goes and the name is free again
    assert holder.wait(timeout=60) == 0
    assert ".t.lock" not in _names(tmp_path)
    with ReportFolder(tmp_path, "t") as folder:
        folder.write("t.json", b"{}")
    assert _names(tmp_path) == {"t.json"}


def test_another_name_in_the_same_folder_runs_beside_it(tmp_path, holder):
    with ReportFolder(tmp_path, "u") as folder:
        folder.write("u.md", b"u")
    assert (tmp_path / "u.md").read_bytes() == b"u"
    assert holder.poll() is None  # still holding its own


def test_a_killed_run_does_not_block_the_next(tmp_path, holder):
    holder.kill()  # SIGKILL: no release, the lock file stays; the kernel drops the lock
    holder.wait(timeout=60)
    assert ".t.lock" in _names(tmp_path)
    with ReportFolder(tmp_path, "t") as folder:
        assert (tmp_path / ".t.lock").read_text() == f"{os.getpid()}\n"
        folder.write("t.md", b"ok")
    assert _names(tmp_path) == {"t.md"}


def test_two_claims_in_one_process_conflict_too(tmp_path):
    with ReportFolder(tmp_path, "t"):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            ReportFolder(tmp_path, "t").claim()


def test_a_run_that_opened_the_lock_file_just_before_it_was_released_takes_no_stale_lock(tmp_path, monkeypatch):
    """B opens .t.lock while A holds it; A releases (removing the file) and C claims a new one before B's flock:
    B's flock succeeds on the removed file, so B must notice, open the new one, and refuse (C holds it)."""
    a, b, c = (ReportFolder(tmp_path, "t") for _ in range(3))
    a.claim()
    real_flock, calls = output.fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:  # B's first flock: A goes, C comes, then B's lock on the old file succeeds
            a.release()
            c.claim()
        return real_flock(fd, op)

    monkeypatch.setattr(output.fcntl, "flock", flock)
    with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        b.claim()
    assert len(calls) == 3 and c.claimed and not b.claimed
    c.release()


def test_concurrent_writes_of_two_names_use_their_own_temporary_files(tmp_path):
    import threading

    start = threading.Barrier(2)
    errors = []

    def run(name):
        try:
            with ReportFolder(tmp_path, name) as folder:
                start.wait(timeout=60)
                for i in range(200):
                    folder.write(f"{name}.json", f"{name} {i}".encode())
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _names(tmp_path) == {"a.json", "b.json"}
    assert (tmp_path / "a.json").read_text() == "a 199" and (tmp_path / "b.json").read_text() == "b 199"


# -- 10: everything that could fail at the end fails before anything runs ------------------------------------


def _refused(tmp_path, match: str, name: str = "t") -> None:
    with pytest.raises(OutputError, match=match) as refused:
        ReportFolder(tmp_path, name).claim()
    assert "\n" not in str(refused.value) and ("--out" in str(refused.value) or "remove it" in str(refused.value))
    assert f".{name}.lock" not in _names(tmp_path)  # a refused claim holds nothing and leaves nothing
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


@pytest.mark.parametrize("file_name", ["t.md", "t.html", "t.json", "t-heatmap.png"])
def test_a_folder_standing_where_a_report_file_goes_is_found_up_front(tmp_path, file_name):
    (tmp_path / file_name).mkdir()
    _refused(tmp_path, f"a folder stands where the report file .*{re.escape(file_name)} goes")


def test_a_file_or_link_standing_where_the_crashes_folder_goes_is_found_up_front(tmp_path):
    (tmp_path / "t-crashes").write_text("mine")
    _refused(tmp_path, "a file stands where the crashes folder .*t-crashes goes")
    (tmp_path / "t-crashes").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("kept")
    (tmp_path / "t-crashes").symlink_to(elsewhere)
    _refused(tmp_path, "a symbolic link stands where the crashes folder")
    assert (elsewhere / "keep").read_text() == "kept"


def test_a_folder_that_cannot_take_a_new_file_is_found_up_front(tmp_path, monkeypatch):
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(output.tempfile, "mkstemp", mkstemp)
    _refused(tmp_path, "cannot write to .*: Permission denied; pick another folder with --out")


@pytest.mark.skipif(ROOT, reason="root writes into a read-only folder (the monkeypatched test above stands in)")
def test_a_read_only_folder_is_found_up_front(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot write to .*--out"):
            ReportFolder(out, "t").claim()
    finally:
        out.chmod(0o755)


def test_out_being_a_file_is_found_up_front(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(OutputError, match="is not a folder.*--out"):
        ReportFolder(tmp_path / "out", "t").claim()


def test_a_read_only_report_file_is_no_obstacle_writes_replace_it(tmp_path):
    """What really fails is checked, not what looks like it would: a rename replaces a 0444 file."""
    old = tmp_path / "t.md"
    old.write_text("old")
    old.chmod(0o444)
    with ReportFolder(tmp_path, "t") as folder:
        folder.write("t.md", b"new")
    assert old.read_text() == "new"


def test_a_file_of_another_user_in_a_sticky_folder_is_found_up_front(tmp_path, monkeypatch):
    (tmp_path / "t.json").write_text("theirs")
    tmp_path.chmod(tmp_path.stat().st_mode | stat.S_ISVTX)
    someone = max(tmp_path.stat().st_uid, os.geteuid()) + 1  # owns neither the folder nor the file
    monkeypatch.setattr(output.os, "geteuid", lambda: someone)
    _refused(tmp_path, "belongs to another user in a sticky folder")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\0b", "x" * 300])
def test_a_name_that_is_not_a_plain_file_stem_is_refused(tmp_path, name):
    with pytest.raises(OutputError, match="--name .* is not a file name stem"):
        ReportFolder(tmp_path, name)


def test_a_reused_folder_keeps_no_figure_or_crash_of_the_previous_run_and_every_other_file(tmp_path):
    # the previous run's Markdown and HTML go too: the JSON is rewritten at once, so no report is ever mixed
    ours = ["t-heatmap.png", "t-conditioning.png", "t-old_figure.png", ".t.abc123_x.tmp", "t.md", "t.html"]
    theirs = ["t-x-heatmap.png", "t.x-heatmap.png", "u-heatmap.png", "notes.txt", "t.png", "t-.png", ".t.x.abc123_x.tmp",
              ".t.tmp", "t-heatmap.png.bak", "t.json", "u.md"]
    for name in ours + theirs:
        (tmp_path / name).write_text(name)
    (tmp_path / "t-crashes" / "case-1").mkdir(parents=True)
    (tmp_path / "t-crashes" / "case-1" / "case.json").write_text("{}")
    (tmp_path / "u-crashes").mkdir()
    outside = tmp_path / "outside.png"
    outside.write_text("target")
    (tmp_path / "t-length.png").symlink_to(outside)  # the link goes, its target stays
    (tmp_path / "t-dir.png").mkdir()  # a folder is never removed (and no figure goes there)

    with ReportFolder(tmp_path, "t") as folder:
        assert folder.crash_dir == tmp_path / "t-crashes"
        assert _names(tmp_path) == set(theirs) | {"u-crashes", "outside.png", "t-dir.png", ".t.lock"}
    assert all((tmp_path / name).read_text() == name for name in theirs)
    assert outside.read_text() == "target"


def test_every_figure_name_is_one_claim_recognises_as_this_runs(tmp_path):
    folder = ReportFolder(tmp_path, "t")
    assert figures.FIGURES and all(re.fullmatch(output.FIGURE_WORD, suffix) for suffix in figures.FIGURES)
    assert all(folder._is_old_figure(p.name) for p in folder.figure_files())


# -- 13: no fixed names, links never followed, no temporary file left -----------------------------------------


def test_a_link_planted_at_a_report_file_is_replaced_and_its_target_untouched(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "t.json").symlink_to(target)
    with ReportFolder(out, "t") as folder:
        folder.write("t.json", b"{}")
    assert target.read_text() == "precious"
    assert not (out / "t.json").is_symlink() and (out / "t.json").read_text() == "{}"


def test_a_link_planted_at_the_lock_file_is_refused_never_followed(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".t.lock").symlink_to(target)
    with pytest.raises(OutputError, match="symbolic link stands at the lock file"):
        ReportFolder(out, "t").claim()
    assert target.read_text() == "precious"


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_or_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch, failure):
    with ReportFolder(tmp_path, "t") as folder:
        folder.write("t.md", b"old")

        def replace(src, dst):
            assert os.path.basename(src).startswith(".t.")  # a fresh name of this run's, never a fixed one
            raise failure

        monkeypatch.setattr(output.os, "replace", replace)
        with pytest.raises(type(failure)):
            folder.write("t.md", b"new")
        monkeypatch.undo()
        assert _names(tmp_path) == {"t.md", ".t.lock"}
    assert (tmp_path / "t.md").read_text() == "old"  # a reader sees the old file or the new one


def test_written_files_have_the_modes_plain_files_get(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    with ReportFolder(tmp_path, "t") as folder:
        folder.write("t.html", b"<html>")
    assert stat.S_IMODE((tmp_path / "t.html").stat().st_mode) == 0o666 & ~umask


def test_write_takes_plain_names_only_after_claim(tmp_path):
    folder = ReportFolder(tmp_path, "t")
    with pytest.raises(RuntimeError, match="before claim"):
        folder.write("t.md", b"")
    with folder:
        with pytest.raises(ValueError):
            folder.write("../t.md", b"")
    assert _names(tmp_path) == set()


# -- 14: what a backend says cannot inject markup ---------------------------------------------------------------

EVIL = "evil\n# Injected heading\n<script>alert(1)</script> | extra | cell"


def _report(**kw):
    cells = [CellResult(EVIL, "c", "cpu", "float32", "train_forward", "ran",
                        rows=[QuantityRow("y", "conforms", max_ratio=0.5, worst_input="`code` <b>bold</b>")]),
             CellResult("plain", "c", "cpu", "float32", "train_forward", "error", reason=EVIL)]
    return render.Report(cells, {"evil": "1\n# Env <script>x</script>"}, 0, 1, False, **kw)


def _table_widths(markdown: str) -> list[int]:
    """The number of cells of every table line (unescaped pipes)."""
    return [len(re.findall(r"(?<!\\)\|", line)) for line in markdown.splitlines() if line.startswith("|")]


def test_markdown_cell_escapes_one_rule_at_a_time():
    assert render.markdown_cell("<script>&") == "&lt;script&gt;&amp;"
    assert render.markdown_cell("a\nb\r\nc\u2028d") == "a b c d"
    assert render.markdown_cell("a|b") == "a\\|b"
    assert render.markdown_cell("a\\|b") == "a\\\\\\|b"  # a backslash cannot un-escape the pipe
    assert render.markdown_cell("# h") == "\\# h" and render.markdown_cell("a # h") == "a # h"
    assert render.markdown_cell("`x`") == "\\`x\\`"
    assert render.markdown_cell("![x](http://e/p.png)") == "![x\\](http://e/p.png)"
    assert render.markdown_cell("\x1b[31m") == "\\\\x1b[31m"
    assert render.markdown_cell(1.5) == "1.5"


def test_the_markdown_report_keeps_every_row_one_row_and_passes_no_raw_html():
    md = render.markdown(_report())
    assert "<script>" not in md and "<b>" not in md and "&lt;script&gt;" in md
    headings = [line for line in md.splitlines() if line.startswith("#")]
    short = [f"## {render.markdown_cell(s.title)}" for s in render.markdown_sections(_report())]
    assert headings == ["# bnconf discrepancy report", "## Summary", "## Findings (1)", *short, "## Full tables"]
    for table_lines in re.split(r"\n\n(?=\|)", md)[1:]:
        widths = _table_widths(table_lines.split("\n\n")[0])
        assert len(set(widths)) == 1, table_lines  # the header's width in every row
    assert "\\| extra \\| cell" in md  # the error message in the findings, its pipes escaped


def test_the_html_report_escapes_every_cell():
    page = render.html_page(_report())
    assert page.count("<script>") == 1 and "<script>alert" not in page and "<b>bold" not in page  # only the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;bold" in page


def test_the_terminal_table_keeps_a_name_with_newlines_on_one_row():
    shown = table(["backend", "verdict"], [[EVIL, "ok"], ["x\x1b[2J", None]])
    lines = shown.splitlines()
    assert len(lines) == 4 and not any(line.startswith("# Injected") for line in lines)
    assert "\x1b" not in shown and "\\x1b[2J" in shown and lines[3].rstrip().endswith("-")
    assert "\n# Injected" not in render.terminal(_report())
