"""Compiled JAX programs kept on disk, shared by the JAX-based adapters (Flax, Haiku, Equinox, Keras on JAX).

A battery draws a new input shape for most examples, and on a CPU each new (program, shapes, dtypes) costs JAX
tracing and lowering (20 to 50 ms) and XLA a compilation (0.1 to 1 s), against well under a millisecond to run it.
`call` runs a jitted function through a cache of compiled executables: in memory (the last `IN_MEMORY`), else
in a folder, else compiled (`jitted.lower(*args).compile()`) and saved there. A process that finds the program on
disk loads it in a few milliseconds, without tracing, lowering or compiling.

An entry is keyed by everything that decides the program: the adapter's key (backend name and static signature),
the arguments' tree, shapes, dtypes and weak types, float64 on or off, the device platform, bnconf's files that
write the program (by content), the installed files (path, size, mtime) of jax, jaxlib, ml_dtypes and the
library, the CPU's architecture and flags, and the JAX_*/XLA_* environment. What runs is what jit would compile
(`tests/adapters/test_jax.py` checks outputs bit for bit); a changed library, adapter or flag is another key. An
entry that cannot be read, or whose executable raises, is dropped and the program run through jit instead.

Where: `$BNCONF_JAX_CACHE` (a folder; "off", "0" or "" turn the cache off), else `$XDG_CACHE_HOME/bnconf/jax`
(`~/.cache/bnconf/jax`), made private (0700) when bnconf creates it. Loading an executable runs its machine code
(and JAX's loader unpickles it), so nothing is loaded that someone else could have written: a folder or entry
that is not owned by this user, or that others may write, turns the cache off for the process (one warning line
naming the folder and the fix), and every entry carries an HMAC-SHA256 under a private key kept in the folder
(`key`, 0600), checked before anything is unpickled: an entry from elsewhere, or changed, is compiled afresh.
Entries are written to a temporary name and renamed (a parallel worker never reads half a file); beyond
`MAX_BYTES` the least recently used are removed. CPU only (elsewhere `call` is plain jit). Nothing here imports
jax at import time.
"""

import functools
import hashlib
import hmac
import importlib.util
import os
import secrets
import stat
import sys
import platform
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

ENV = "BNCONF_JAX_CACHE"
OFF = ("", "0", "off", "none", "false")
FORMAT = 1  # of an entry; part of every key
MAX_BYTES = 1 << 30  # the folder's bound; an entry is 10 to 100 KB
IN_MEMORY = 512  # loaded executables kept per process
PRUNE_EVERY = 64  # writes between checks of the folder's size
_LOADED: OrderedDict = OrderedDict()
_WRITES = [0]


@dataclass(frozen=True)
class Program:
    """What decides a jitted function's program besides its arguments."""

    key: tuple  # e.g. (backend name, its class, the static signature): its repr must be stable across processes
    packages: tuple[str, ...] = ()  # import names of the libraries it calls (jax, jaxlib and ml_dtypes always count)
    sources: tuple[str, ...] = ()  # bnconf's files that write it


def cache_dir() -> Path | None:
    """The folder, None when turned off (`BNCONF_JAX_CACHE=off`)."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnconf" / "jax"


def forget() -> None:
    """Drop the executables held in memory and the folder's checked key (the folder stays)."""
    _LOADED.clear()
    _secret.cache_clear()


def _unsafe(path: Path, info: os.stat_result) -> str:
    """Why `path` may hold what another user wrote ("" when it is this user's alone)."""
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others (mode {stat.filemode(info.st_mode)})"
    return ""


@functools.lru_cache(maxsize=8)
def _secret(folder: Path) -> bytes | None:
    """The folder's private HMAC key (made on first use), None when the folder or key is not safely this
    user's: the cache is then off for the process, with one warning line."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / "programs").mkdir(mode=0o700, exist_ok=True)
        for path in (folder, folder / "programs"):
            info = os.lstat(path)
            problem = _unsafe(path, info) or ("" if stat.S_ISDIR(info.st_mode) else f"{path} is not a folder")
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
            problem = _unsafe(key_path, info) or (
                f"{key_path} is readable by others" if info.st_mode & (stat.S_IRGRP | stat.S_IROTH) else "")
            if problem:
                raise PermissionError(problem)
            key = f.read()
        if len(key) != 32:
            raise PermissionError(f"{key_path} is not a key bnconf wrote ({len(key)} bytes)")
        return key
    except OSError as e:
        print(f"bnconf: the JAX program cache is off for this run: {e}; make the folder yours alone "
              f"(chmod 700, no other owner) or set {ENV} to a folder of your own, or {ENV}=off", file=sys.stderr)
        return None


def call(jitted, args: tuple, program: Program, device):
    """`jitted(*args)`, through the cache of compiled executables when it is on and `device` is a CPU."""
    folder = cache_dir()
    if folder is None or device.platform != "cpu":
        return jitted(*args)
    key = _secret(folder)
    if key is None:
        return jitted(*args)
    text = _key_text(program, args, device)
    digest = hashlib.sha256(text.encode()).hexdigest()
    executable = _LOADED.pop(digest, None)
    from_disk = False
    if executable is None:
        executable = _read(folder / "programs" / digest, text, device, key)
        from_disk = executable is not None
        if executable is None:
            executable = jitted.lower(*args).compile()  # the backend's own errors (tracing) are raised here
            _write(folder, digest, text, executable, key)
    _LOADED[digest] = executable
    while len(_LOADED) > IN_MEMORY:
        _LOADED.popitem(last=False)
    if not from_disk:
        return executable(*args)
    try:
        return executable(*args)
    except Exception:  # noqa: BLE001 - a bad entry: drop it, jit decides (and raises what the backend raises)
        _LOADED.pop(digest, None)
        _remove(folder / "programs" / digest)
        return jitted(*args)


def _key_text(program: Program, args: tuple, device) -> str:
    import jax
    import numpy as np

    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = tuple((tuple(a.shape), a.dtype.name, bool(a.weak_type)) if isinstance(a, jax.Array) else type(a).__name__
                   for a in leaves)
    x64 = jax.dtypes.canonicalize_dtype(np.float64).name  # float64 under jax_enable_x64, else float32
    return repr((FORMAT, program.key, str(tree), shapes, x64, device.platform,
                 fingerprint(program.packages, program.sources)))


@functools.lru_cache(maxsize=None)
def fingerprint(packages: tuple[str, ...], sources: tuple[str, ...]) -> str:
    """A digest of what the compiled code depends on beyond the key: versions, installed files, bnconf's sources,
    the CPU and the JAX/XLA environment."""
    import jax
    import jaxlib

    h = hashlib.sha256()
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_")) and k != ENV)
    h.update(repr((jax.__version__, jaxlib.__version__, platform.machine(), _cpu_flags(), env,
                   jax.devices("cpu")[0].client.platform_version)).encode())
    for name in sorted({"jax", "jaxlib", "ml_dtypes", *packages}):
        spec = importlib.util.find_spec(name)
        roots = list(spec.submodule_search_locations or []) if spec else []
        for root in roots:
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                for f in sorted(files):
                    if f.endswith((".py", ".so", ".pyd", ".dylib")):
                        st = os.stat(os.path.join(folder, f))
                        h.update(f"{folder}/{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for source in sources:
        h.update(Path(source).read_bytes())
    return h.hexdigest()


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _join(*parts: bytes) -> bytes:
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def _split(data: bytes) -> list[bytes]:
    parts, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from("<Q", data, i)
        parts.append(data[i + 8:i + 8 + n])
        i += 8 + n
    return parts


def _read(path: Path, text: str, device, key: bytes):
    """The entry's executable loaded onto `device`, None when there is none, it is not this user's alone, its
    HMAC under `key` does not match (nothing of it is unpickled then) or it cannot be read (then removed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            if _unsafe(path, os.fstat(f.fileno())):
                return None
            data = f.read()
    except OSError:
        return None
    mac, body = data[:32], data[32:]
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        _remove(path)
        return None
    try:
        import jax
        from jax.experimental import serialize_executable

        stored, in_tree, out_tree, blob = _split(zlib.decompress(body))
        if stored != text.encode():
            return None
        trees = [jax.tree_util.PyTreeDef.deserialize_using_proto(jax.tree_util.default_registry, t) for t in (in_tree, out_tree)]
        executable = serialize_executable.deserialize_and_load(blob, *trees, backend=device.client,
                                                               execution_devices=[device])
    except Exception:  # noqa: BLE001 - truncated, corrupt or from another jax: compile instead
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used
    except OSError:
        pass
    return executable


def _write(folder: Path, digest: str, text: str, executable, key: bytes) -> None:
    """Save the executable (atomically, private, HMAC under `key` first); one that cannot be serialized or saved
    stays in memory only."""
    try:
        from jax.experimental import serialize_executable

        blob, in_tree, out_tree = serialize_executable.serialize(executable)
        body = zlib.compress(_join(text.encode(), in_tree.serialize_using_proto(), out_tree.serialize_using_proto(), blob), 1)
        programs = folder / "programs"
        tmp = programs / f".{digest}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(hmac.new(key, body, hashlib.sha256).digest() + body)
        os.replace(tmp, programs / digest)
    except Exception:  # noqa: BLE001 - not serializable (constants), a full disk, a read-only home
        return
    _WRITES[0] += 1
    if _WRITES[0] % PRUNE_EVERY == 0:
        _prune(folder / "programs")


def _prune(programs: Path, limit: int = MAX_BYTES) -> None:
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
        _remove(p)
        total -= size


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
