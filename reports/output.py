"""A report's output folder, owned by one run: claimed before any cell runs, written atomically, released.

    folder = ReportFolder(out, name)
    folder.claim()                      # before the battery: OutputError (one line, with the fix) if it cannot work
    folder.write("name.json", data)     # atomic: a reader sees the old file or the new one, never half of one
    folder.crash_dir                    # <out>/<name>-crashes, where isolation keeps the inputs that crashed
    folder.cases_dir                    # <out>/<name>-cases, every other finding's case, for `bnconf replay`
    folder.release()                    # or `with ReportFolder(out, name) as folder: ...`

What `claim` guarantees, before anything runs:

- One run per (folder, name): an advisory lock (`flock`) on `<out>/.<name>.lock`. A second run with the same
  --out and --name refuses with OutputError naming the run that holds it (its pid); other names in the same
  folder run side by side. The kernel drops the lock when its process dies, so a killed run never blocks the
  next one. The lock file is opened with O_NOFOLLOW (a planted link is refused, never followed) and removed
  by `release`.
- Every way the writes at the end could fail is found now: a folder that cannot hold a new file (read-only,
  no permission, not a folder), a directory standing where a report file or figure goes, a file or link
  standing where the crashes or cases folder goes, an existing file another user owns in a sticky folder (rename
  would be refused). An existing read-only report file is not a failure: writes replace files by rename.
- The previous run of the same name leaves nothing behind: its figures (`<name>-<word>.png`), its crashes
  and cases folders and temporary files of a dead run (`.<name>.<random>.tmp`, removed while holding the lock) go.
  Files of other names are never touched (`<name>-x-heatmap.png` belongs to the run named `<name>-x`).

`write` goes through `tempfile.mkstemp` in the folder (a fresh name, O_EXCL: no fixed name to plant a link
at) and `os.replace`: a link planted at the report's name is replaced by the file, its target untouched, and
the temporary file never outlives a failed or interrupted write (only SIGKILL can leave one; the next
`claim` of that name removes it). An OSError while writing (disk full) propagates unchanged.
"""

import errno
import fcntl
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

REPORT_FORMATS = ("md", "html", "json")
_NAME_MAX = 255
_TEMP_SUFFIX = ".tmp"
_LONGEST_EXTRA = 30  # room beside the name for ".<name>.<random>.tmp", "<name>-<figure>.png", "<name>-crashes"


class OutputError(ValueError):
    """The report's output folder cannot be used: one line naming the problem and the fix."""


def _figure_suffixes() -> tuple[str, ...]:
    from .figures import FIGURES  # numpy only: matplotlib is imported when a figure is drawn

    return tuple(FIGURES)


FIGURE_WORD = r"[A-Za-z0-9_]+"  # a figure's suffix: no '-' or '.', so that `<name>-<word>.png` is never another name's


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022  # the usual one; reading it with os.umask would change it for other threads meanwhile


class ReportFolder:
    """The output folder `out` of the run named `name` (the report's file stem)."""

    def __init__(self, out, name: str):
        name = str(name)
        if (not name or name in (".", "..") or any(c in name for c in "/\\\0")
                or len(os.fsencode(name)) > _NAME_MAX - _LONGEST_EXTRA):
            raise OutputError(f"--name {name!r} is not a file name stem; give a plain name of at most "
                              f"{_NAME_MAX - _LONGEST_EXTRA} bytes such as 'report' (the folder goes in --out)")
        self.out = Path(out)
        self.name = name
        self.crash_dir = self.out / f"{name}-crashes"
        self.lock_path = self.out / f".{name}.lock"
        self._lock_fd: int | None = None
        self._mode = 0o666 & ~_umask()  # what a plain open() would have given the report files

    # -- the files of this run ------------------------------------------------------------------------------

    def report_files(self) -> list[Path]:
        return [self.out / f"{self.name}.{ext}" for ext in REPORT_FORMATS]

    def figure_files(self) -> list[Path]:
        return [self.out / f"{self.name}-{suffix}.png" for suffix in _figure_suffixes()]

    def _is_old_figure(self, file_name: str) -> bool:
        return re.fullmatch(re.escape(self.name) + "-" + FIGURE_WORD + r"\.png", file_name) is not None

    def _is_temp(self, file_name: str) -> bool:
        """`.<name>.<random>.tmp` as mkstemp names this run's temporary files (its random part has no '.')."""
        return re.fullmatch(r"\." + re.escape(self.name) + r"\.[^.]+" + re.escape(_TEMP_SUFFIX), file_name) is not None

    @property
    def cases_dir(self) -> Path:
        """Where the run saves each NON-CONFORMANT row's, ERROR cell's and DIFFERS probe's case (conformance/run.py
        the run's cases are saved there)."""
        return self.out / f"{self.name}-cases"

    @property
    def claimed(self) -> bool:
        return self._lock_fd is not None

    # -- claim and release ----------------------------------------------------------------------------------

    def claim(self) -> None:
        """Lock the folder for this name, check that every write can succeed, remove the previous run's files."""
        if self.claimed:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except FileExistsError as e:
            raise OutputError(f"--out {self.out} is not a folder (a file stands there); pick another folder with --out") from e
        except OSError as e:
            raise OutputError(f"cannot create the folder {self.out}: {e.strerror or e}; pick another folder with --out") from e
        self._lock()
        try:
            self._check()
            self._clear_previous_run()
        except BaseException:
            self.release()
            raise

    def _lock(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):  # another run may remove the lock file between our open and our flock: open it again
            try:
                fd = os.open(self.lock_path, flags, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise OutputError(f"a symbolic link stands at the lock file {self.lock_path}; remove it "
                                      "(bnconf never follows it) or pick another --out or --name") from e
                raise OutputError(f"cannot write to {self.out}: {e.strerror or e}; pick another folder with --out") from e
            try:
                held = os.fstat(fd)
                if not stat.S_ISREG(held.st_mode):
                    raise OutputError(f"{self.lock_path} is not a regular file; remove it or pick another --out or --name")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    raise OutputError(
                        f"another bnconf run ({f'pid {pid}' if pid.isdigit() else 'pid unknown'}) is writing the report "
                        f"{self.name!r} into {self.out}; pick another --out or --name, or wait until it ends") from None
                try:
                    now = os.stat(self.lock_path, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                    os.close(fd)  # the run we waited for released it (and removed the file): take the new one
                    continue
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
            return
        raise OutputError(f"could not lock {self.lock_path}: other runs keep replacing it; "
                          "pick another --out or --name")

    def release(self) -> None:
        """Unlock (removing the lock file). Safe to call twice; the report files stay."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            held, now = os.fstat(fd), os.stat(self.lock_path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                os.unlink(self.lock_path)  # while still locked: the next run re-checks the path after its flock
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "ReportFolder":
        self.claim()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- the checks -----------------------------------------------------------------------------------------

    def _check(self) -> None:
        fix = "pick another folder with --out"
        try:
            fd, probe = tempfile.mkstemp(dir=self.out, prefix=f".{self.name}.", suffix=_TEMP_SUFFIX)
        except OSError as e:
            raise OutputError(f"cannot write to {self.out}: {e.strerror or e}; {fix}") from e
        os.close(fd)
        os.unlink(probe)
        folder = os.stat(self.out)
        sticky_elsewhere = bool(folder.st_mode & stat.S_ISVTX) and os.geteuid() not in (0, folder.st_uid)
        for path in self.report_files() + self.figure_files():
            try:
                there = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise OutputError(f"cannot check {path}: {e.strerror or e}; {fix}") from e
            if stat.S_ISDIR(there.st_mode):
                raise OutputError(f"a folder stands where the report file {path} goes; remove it, or pick another "
                                  "--out or --name")
            if sticky_elsewhere and there.st_uid != os.geteuid():
                raise OutputError(f"{path} belongs to another user in a sticky folder and cannot be replaced; "
                                  "remove it, or pick another --out or --name")
        for kind, path in (("crashes", self.crash_dir), ("cases", self.cases_dir)):
            try:
                there = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(there.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(there.st_mode) else "a file"
                raise OutputError(f"{what} stands where the {kind} folder {path} goes; remove it, or pick "
                                  "another --out or --name")

    def _clear_previous_run(self) -> None:
        """The previous run of this name: its Markdown and HTML (the JSON is rewritten at once: this run's report
        is never mixed with the last one's), figures, crashes and cases folders and leftover temporary files."""
        try:
            for folder in (self.crash_dir, self.cases_dir):
                if folder.is_dir() and not folder.is_symlink():
                    shutil.rmtree(folder)
            for path in self.report_files():
                if path.suffix != ".json" and (path.is_symlink() or path.is_file()):
                    path.unlink()  # a link is removed, never its target
            for entry in os.scandir(self.out):
                if (self._is_old_figure(entry.name) or self._is_temp(entry.name)) and not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)  # a link is removed, never its target
        except OSError as e:
            raise OutputError(f"cannot remove the previous run's {e.filename or 'files'}: {e.strerror or e}; "
                              "remove it, or pick another --out or --name") from e

    # -- writing --------------------------------------------------------------------------------------------

    def write(self, file_name: str, data: bytes) -> Path:
        """Write `data` to `<out>/<file_name>` atomically (temporary file in the folder, then rename)."""
        if not self.claimed:
            raise RuntimeError("ReportFolder.write before claim(): claim the folder before the run starts")
        if not file_name or file_name in (".", "..") or any(c in file_name for c in "/\\\0"):
            raise ValueError(f"{file_name!r} is not a plain file name")
        path = self.out / file_name
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=f".{self.name}.", suffix=_TEMP_SUFFIX)
        done = False
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), self._mode)  # mkstemp makes it 0600; a report is as readable as any file
                f.write(data)
            os.replace(tmp, path)
            done = True
        finally:
            if not done:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        return path
