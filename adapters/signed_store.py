"""A private on-disk store of signed entries: what the caches of compiled programs (adapters/jax_cache.py, JAX
executables) and built graphs (adapters/tf_graph_cache.py, TensorFlow 1 graphs) keep between processes.

Loading such an entry runs what it holds (machine code, a graph whose ops may read and write files), so nothing
is loaded that someone else could have written: a folder, key or entry that is not owned by this user, or that
others may write, turns the store off for the process (one warning line naming the folder and the fix), and every
entry carries an HMAC-SHA256 under a private key kept in the folder (`key`, 0600), checked before anything in it
is parsed: an entry from elsewhere, or changed, is removed and made afresh by the caller. An entry also holds the
full text of its key, compared on reading (a digest collision or a key of another format is a miss). Entries are
written to a temporary name and renamed (a parallel worker never reads half a file); beyond `MAX_BYTES` the least
recently used are removed.
"""

import functools
import hashlib
import hmac
import os
import secrets
import stat
import struct
import sys
import zlib
from pathlib import Path

OFF = ("", "0", "off", "none", "false")
MAX_BYTES = 1 << 30  # a folder's bound
PRUNE_EVERY = 64  # writes between checks of the folder's size
_WRITES = [0]


def folder_from(env: str, default_name: str) -> Path | None:
    """The folder `$env` names ("off", "0" or "" turn the store off: None), else `$XDG_CACHE_HOME/bnconf/<name>`
    (`~/.cache/bnconf/<name>`)."""
    value = os.environ.get(env)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnconf" / default_name


def unsafe(path: Path, info: os.stat_result) -> str:
    """Why `path` may hold what another user wrote ("" when it is this user's alone)."""
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others (mode {stat.filemode(info.st_mode)})"
    return ""


@functools.lru_cache(maxsize=8)
def secret(folder: Path, what: str, env: str) -> bytes | None:
    """The folder's private HMAC key (made on first use), None when the folder or key is not safely this user's:
    the store is then off for the process, with one warning line naming `what` it keeps and `env`."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / "programs").mkdir(mode=0o700, exist_ok=True)
        for path in (folder, folder / "programs"):
            info = os.lstat(path)
            problem = unsafe(path, info) or ("" if stat.S_ISDIR(info.st_mode) else f"{path} is not a folder")
            if problem:
                raise PermissionError(problem)
        key_path = folder / "key"
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        except FileExistsError:
            pass
        fd = os.open(key_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            problem = unsafe(key_path, info) or (
                f"{key_path} is readable by others" if info.st_mode & (stat.S_IRGRP | stat.S_IROTH) else "")
            if problem:
                raise PermissionError(problem)
            key = f.read()
        if len(key) != 32:
            raise PermissionError(f"{key_path} is not a key bnconf wrote ({len(key)} bytes)")
        return key
    except OSError as e:
        print(f"bnconf: the {what} cache is off for this run: {e}; make the folder yours alone "
              f"(chmod 700, no other owner) or set {env} to a folder of your own, or {env}=off", file=sys.stderr)
        return None


def opened(folder: Path | None, what: str, env: str) -> tuple[Path, bytes] | None:
    """(folder, its private key) when the store is on (`folder` not None) and safely this user's (`secret`), else
    None."""
    if folder is None:
        return None
    key = secret(folder, what, env)
    return None if key is None else (folder, key)


def join(*parts: bytes) -> bytes:
    """Byte strings as one, each behind its length."""
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def split(data: bytes) -> list[bytes]:
    """The byte strings `join` joined."""
    parts, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        parts.append(data[i + 8:i + 8 + n])
        i += 8 + n
    return parts


def digest_of(text: str) -> str:
    """An entry's file name: the SHA-256 of its key text."""
    return hashlib.sha256(text.encode()).hexdigest()


def entry_path(folder: Path, text: str) -> Path:
    """Where the entry of the key `text` is kept."""
    return folder / "programs" / digest_of(text)


def discard(folder: Path, text: str) -> None:
    """Remove the entry of the key `text` (one that was read but cannot be used), if there is one."""
    remove(entry_path(folder, text))


def read(folder: Path, text: str, key: bytes) -> list[bytes] | None:
    """The parts stored under the key `text`, None when there is no such entry, it is not this user's alone, its
    HMAC under `key` does not match (then removed, nothing of it parsed) or it holds another key text."""
    path = entry_path(folder, text)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            if unsafe(path, os.fstat(f.fileno())):
                return None
            data = f.read()
    except OSError:
        return None
    mac, body = data[:32], data[32:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        remove(path)
        return None
    try:
        stored, *parts = split(zlib.decompress(body))
    except Exception:  # noqa: BLE001 - signed but unreadable (bnconf of another format): made afresh
        remove(path)
        return None
    if stored != text.encode():
        return None
    try:
        os.utime(path)  # recently used
    except OSError:
        pass
    return parts


def write(folder: Path, text: str, parts: list[bytes], key: bytes) -> None:
    """Store `parts` under the key `text` (atomically, private, HMAC under `key` first); a full disk or a
    read-only folder leaves the store as it was."""
    programs = folder / "programs"
    digest = digest_of(text)
    try:
        body = zlib.compress(join(text.encode(), *parts), 1)
        tmp = programs / f".{digest}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(hmac.new(key, body, hashlib.sha256).digest() + body)
        os.replace(tmp, programs / digest)
    except OSError:
        return
    _WRITES[0] += 1
    if _WRITES[0] % PRUNE_EVERY == 0:
        prune(programs)


def prune(programs: Path, limit: int = MAX_BYTES) -> None:
    """Remove the least recently used entries until the folder holds at most 80% of `limit` bytes, if it exceeds it."""
    entries = []
    for p in programs.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        entries.append((st.st_mtime_ns, st.st_size, p))
    total = sum(size for _, size, _ in entries)
    if total <= limit:
        return
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= 0.8 * limit:
            break
        remove(p)
        total -= size


def remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def fingerprint(facts: tuple, packages, sources, env_prefixes: tuple[str, ...], env_except: str) -> str:
    """A digest of what a stored entry depends on beyond its key: `facts` (versions, the machine), the installed
    files of `packages` (`installed_files`), bnconf's `sources` (by content) and the environment variables starting
    with `env_prefixes` (but `env_except`, the store's own)."""
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(env_prefixes) and k != env_except)
    h = hashlib.sha256(repr((facts, env)).encode())
    h.update(installed_files(packages).encode())
    for source in sources:
        h.update(Path(source).read_bytes())
    return h.hexdigest()


def installed_files(names) -> str:
    """A digest of the installed files (path, size, mtime) of the packages `names` import: a changed or
    reinstalled library is another key."""
    import importlib.util

    h = hashlib.sha256()
    for name in sorted(set(names)):
        spec = importlib.util.find_spec(name)
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                for f in sorted(files):
                    if f.endswith((".py", ".so", ".pyd", ".dylib")):
                        st = os.stat(os.path.join(folder, f))
                        h.update(f"{folder}/{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cpu_flags() -> str:
    """The CPU's feature flags (the machine code a compiler emits depends on them)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()
