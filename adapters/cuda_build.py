"""Build CUDA C++ for the CPU execution model and run the nvcc compile gates (no framework imported).

The CPU path: a translation unit includes adapters/cuda/cuda_on_cpu.h and an unmodified .cu file; g++
compiles it into a shared library (``build_library``) that ctypes loads (``load_library``), or, for
ThreadSanitizer, into an executable with a C++ driver (``build_executable`` + ``run_tsan``: a sanitized
library cannot be loaded into an uninstrumented Python). Builds are cached in a folder keyed by a hash of the
compiler, the flags and the contents of the sources and of every C/C++/CUDA file next to them and in the
include folders; the folder is $BNCONF_BUILD_DIR, else ~/.cache/bnconf/cuda_build (else a temp folder).

The GPU gates (cached the same way): ``nvcc_compile_report`` compiles a .cu to PTX with nvcc and assembles it with ``ptxas -v`` (as
``nvcc -arch=sm_XX -cubin -Xptxas -v`` does) and returns per kernel registers and spill stores/loads plus the PTX; ``ptx_float64_instructions`` lists float64 arithmetic.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent / "cuda"
HEADER = CUDA_DIR / "cuda_on_cpu.h"
CPU_INCLUDE = CUDA_DIR / "cpu_include"  # stubs named cuda_fp16.h, cuda_bf16.h, cuda_runtime.h
SOURCE_SUFFIXES = (".h", ".hpp", ".cuh", ".cu", ".cpp", ".cc", ".inc")
# -fno-strict-aliasing: kernels read float arrays through float4* as they do on a GPU
# -Wno-unknown-pragmas: `#pragma unroll` is for nvcc
BASE_FLAGS = ("-std=c++20", "-pthread", "-fPIC", "-fno-strict-aliasing", "-Wall", "-Wno-unused-function",
              "-Wno-unknown-pragmas")
OPTIMIZED = ("-O2",)
TSAN = ("-fsanitize=thread", "-O1", "-g", "-fno-omit-frame-pointer")
TAIL_LINES = 40


class BuildError(RuntimeError):
    """The compiler is missing or failed; the message names the command and the tail of its output."""


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------- toolchains
def cxx() -> str | None:
    """The C++ compiler: $CXX if set, else g++ on the PATH (None when there is none)."""
    return os.environ.get("CXX") or shutil.which("g++")


def gxx_available() -> bool:
    return cxx() is not None and shutil.which(cxx()) is not None


def nvcc_path() -> str | None:
    """nvcc on the PATH, else under $CUDA_HOME or /usr/local/cuda (None when there is none)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def nvcc_available() -> bool:
    return nvcc_path() is not None


@functools.cache
def _compiler_identity(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError:
        return compiler


# ----------------------------------------------------------------------------------------------- building
def build_dir() -> Path:
    """Where built libraries are cached: $BNCONF_BUILD_DIR, else ~/.cache/bnconf/cuda_build, else a temp folder."""
    configured = os.environ.get("BNCONF_BUILD_DIR")
    candidates = [Path(configured)] if configured else [Path.home() / ".cache" / "bnconf" / "cuda_build",
                                                         Path(tempfile.gettempdir()) / "bnconf_cuda_build"]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        except OSError:
            if configured:
                raise
    raise BuildError(f"no writable build folder among {', '.join(map(str, candidates))}")


def compile_flags(*, sanitize_thread: bool = False, defines: Mapping[str, object] | Iterable[str] = (),
                  include_dirs: Sequence[os.PathLike | str] = (), extra_flags: Sequence[str] = ()) -> list[str]:
    """g++ flags for a CPU build: C++20, the header's folders on the include path, -O2 or ThreadSanitizer."""
    items = defines.items() if isinstance(defines, Mapping) else ((d, None) for d in defines)
    macro_flags = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in items]
    includes = [f"-I{p}" for p in (CPU_INCLUDE, CUDA_DIR, *include_dirs)]
    return [*BASE_FLAGS, *(TSAN if sanitize_thread else OPTIMIZED), *includes, *macro_flags, *extra_flags]


def _dependencies(sources: Sequence[Path], include_dirs: Sequence[os.PathLike | str]) -> list[Path]:
    """Files a build may read: the sources and every C/C++/CUDA file beside them or in the include folders."""
    folders = {CUDA_DIR, CPU_INCLUDE, *(Path(p) for p in include_dirs), *(s.parent for s in sources)}
    files = {s for s in sources}
    for folder in folders:
        if folder.is_dir():
            files.update(f for f in folder.iterdir() if f.is_file() and f.suffix in SOURCE_SUFFIXES)
    return sorted(files)


def _cache_key(compiler: str, flags: Sequence[str], files: Sequence[Path], kind: str) -> str:
    digest = hashlib.sha256()
    for part in (kind, compiler, _compiler_identity(compiler), *flags):
        digest.update(part.encode() + b"\0")
    for f in files:
        digest.update(str(f).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def _build(sources: Sequence[os.PathLike | str], kind: str, *, sanitize_thread: bool,
           defines: Mapping[str, object] | Iterable[str], include_dirs: Sequence[os.PathLike | str],
           extra_flags: Sequence[str], name: str | None) -> Path:
    compiler = cxx()
    if compiler is None or shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler: {compiler or 'g++'} is not on the PATH (set CXX to a g++ >= 11)")
    paths = [Path(s).resolve() for s in sources]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BuildError(f"source files not found: {', '.join(missing)}")
    flags = compile_flags(sanitize_thread=sanitize_thread, defines=defines, include_dirs=include_dirs,
                          extra_flags=extra_flags) + (["-shared"] if kind == "library" else [])
    key = _cache_key(compiler, flags, _dependencies(paths, include_dirs), kind)
    stem = name or paths[0].stem
    out = build_dir() / f"{stem}-{'tsan-' if sanitize_thread else ''}{key}{'.so' if kind == 'library' else ''}"
    if out.exists():
        return out
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    command = [compiler, *flags, *map(str, paths), "-o", str(partial)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"could not run the compiler: {' '.join(command)}\n{error}") from error
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"compilation failed (exit {done.returncode}): {' '.join(command)}\n"
                         f"{_tail(done.stderr + done.stdout)}")
    os.replace(partial, out)  # atomic: concurrent builds of the same key never see a half-written file
    return out


def build_library(sources: Sequence[os.PathLike | str], *, sanitize_thread: bool = False,
                  defines: Mapping[str, object] | Iterable[str] = (), include_dirs: Sequence[os.PathLike | str] = (),
                  extra_flags: Sequence[str] = (), name: str | None = None) -> Path:
    """Compile sources into a cached shared library; returns its path (rebuilt only when an input changed).

    A ThreadSanitizer library (sanitize_thread=True) can only be loaded by a process started with the TSan
    runtime: use build_executable for TSan runs.
    """
    return _build(sources, "library", sanitize_thread=sanitize_thread, defines=defines,
                  include_dirs=include_dirs, extra_flags=extra_flags, name=name)


def build_executable(sources: Sequence[os.PathLike | str], *, sanitize_thread: bool = False,
                     defines: Mapping[str, object] | Iterable[str] = (), include_dirs: Sequence[os.PathLike | str] = (),
                     extra_flags: Sequence[str] = (), name: str | None = None) -> Path:
    """Compile sources (one of them defines main) into a cached executable; returns its path."""
    return _build(sources, "executable", sanitize_thread=sanitize_thread, defines=defines,
                  include_dirs=include_dirs, extra_flags=extra_flags, name=name)


def load_library(sources: Sequence[os.PathLike | str], **options) -> ctypes.CDLL:
    """build_library(sources, **options), loaded with ctypes (sanitize_thread is not allowed here)."""
    if options.get("sanitize_thread"):
        raise BuildError("a ThreadSanitizer build cannot be loaded into Python: use build_executable and run_tsan")
    return ctypes.CDLL(str(build_library(sources, **options)))


# ------------------------------------------------------------------------------------------ ThreadSanitizer
@dataclasses.dataclass(frozen=True)
class TsanRun:
    """One run of a sanitized executable: exit status, output, and the races ThreadSanitizer reported."""

    returncode: int
    output: str
    races: int

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and self.races == 0 and "ThreadSanitizer" not in self.output


def run_tsan(executable: os.PathLike | str, args: Sequence[str] = (), timeout: float = 300) -> TsanRun:
    """Run a ThreadSanitizer executable; every report is kept (halt_on_error=0), its count returned."""
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0 exitcode=66 second_deadlock_stack=1 "
                                        + os.environ.get("TSAN_OPTIONS", ""))
    command = [str(executable), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    output = done.stdout + done.stderr
    if "unexpected memory mapping" in output and shutil.which("setarch"):
        # older TSan runtimes cannot map their shadow under the high ASLR entropy of recent kernels
        command = ["setarch", platform.machine(), "-R", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        output = done.stdout + done.stderr
    return TsanRun(done.returncode, output, output.count("WARNING: ThreadSanitizer: data race"))


# ------------------------------------------------------------------------------------------ nvcc gates
@dataclasses.dataclass(frozen=True)
class KernelResources:
    """What ptxas reported for one kernel (or device function)."""

    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    shared_bytes: int


@dataclasses.dataclass(frozen=True)
class CompileReport:
    arch: str
    command: str
    kernels: dict[str, KernelResources]
    ptx: str
    ptxas_log: str


_FUNCTION = re.compile(r"Compiling entry function '([^']+)'|Function properties for (\S+)")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas_log(log: str) -> dict[str, KernelResources]:
    """Per kernel registers, spills, stack frame and static shared memory from `ptxas -v` output."""
    found: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if m := _FUNCTION.search(line):
            current = m.group(1) or m.group(2)
            found.setdefault(current, dict(registers=0, spill_stores=0, spill_loads=0, stack_frame=0,
                                           shared_bytes=0))
        elif current is not None and (m := _SPILLS.search(line)):
            found[current].update(stack_frame=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current is not None and (m := _USED.search(line)):
            found[current].update(registers=int(m[1]), shared_bytes=int(m[2] or 0))
    return {name: KernelResources(name, **values) for name, values in found.items()}


def _cuda_tool(tool: str, args: Sequence[str]) -> subprocess.CompletedProcess:
    nvcc = nvcc_path()
    if nvcc is None:
        raise BuildError("nvcc is not installed (not on the PATH, $CUDA_HOME or /usr/local/cuda)")
    program = nvcc if tool == "nvcc" else str(Path(nvcc).with_name(tool))
    command = [program, *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"could not run {tool}: {' '.join(command)}\n{error}") from error
    if done.returncode != 0:
        raise BuildError(f"{tool} failed (exit {done.returncode}): {' '.join(command)}\n{_tail(done.stderr + done.stdout)}")
    return done


def nvcc_compile_report(cu_path: os.PathLike | str, arch: str = "sm_90", *, defines: Iterable[str] = (),
                        extra_flags: Sequence[str] = (), ptxas_flags: Sequence[str] = ()) -> CompileReport:
    """Compile a .cu to PTX with `nvcc -arch=<arch> --ptx` (+ extra_flags), then assemble that PTX with
    `ptxas -v` (+ ptxas_flags): what `nvcc -cubin -Xptxas -v` does, without running the front end twice.
    Returns per-kernel registers, spills, stack frame and static shared memory, and the PTX."""
    cu = Path(cu_path).resolve()
    if not cu.is_file():
        raise BuildError(f"no such CUDA source: {cu}")
    nvcc_args = [f"-arch={arch}", "-std=c++17", *(f"-D{d}" for d in defines), *extra_flags]
    key = _cache_key(nvcc_path() or "nvcc", [*nvcc_args, "ptxas", *ptxas_flags], _dependencies([cu], ()), "nvcc")
    cached = build_dir() / f"{cu.stem}-nvcc-{key}.json"
    if cached.exists():
        data = json.loads(cached.read_text())
        return CompileReport(data["arch"], data["command"], parse_ptxas_log(data["ptxas_log"]), data["ptx"],
                             data["ptxas_log"])
    with tempfile.TemporaryDirectory(prefix="bnconf_nvcc_") as tmp:
        ptx_path, cubin_path = Path(tmp) / f"{cu.stem}.ptx", Path(tmp) / f"{cu.stem}.cubin"
        _cuda_tool("nvcc", [*nvcc_args, "--ptx", str(cu), "-o", str(ptx_path)])
        ptxas_args = [f"-arch={arch}", "-v", *ptxas_flags, str(ptx_path), "-o", str(cubin_path)]
        log = _cuda_tool("ptxas", ptxas_args)
        ptx = ptx_path.read_text()
    ptxas_log = log.stderr + log.stdout
    command = f"nvcc {' '.join(nvcc_args)} --ptx {cu} && ptxas {' '.join(ptxas_args)}"
    partial = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(dict(arch=arch, command=command, ptx=ptx, ptxas_log=ptxas_log)))
    os.replace(partial, cached)
    return CompileReport(arch, command, parse_ptxas_log(ptxas_log), ptx, ptxas_log)


# float64 arithmetic in PTX: any arithmetic, math or conversion opcode whose type suffixes include f64
# (add.f64, fma.rn.f64, sqrt.rn.f64, rcp.rn.f64, cvt.f64.f32, cvt.rn.f32.f64, setp.lt.f64, ...). Moves,
# loads and stores of 64-bit values (ld.param.f64, mov.f64) are data movement, not arithmetic.
_F64_OPCODES = ("add", "sub", "mul", "mad", "fma", "div", "rcp", "sqrt", "rsqrt", "neg", "abs", "min", "max",
                "cvt", "setp", "set", "selp", "testp", "copysign", "ex2", "lg2", "sin", "cos", "atom", "red")
_F64_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?((" + "|".join(_F64_OPCODES) + r")(\.[\w:]+)*)\s", re.M)


def ptx_float64_instructions(ptx: str) -> list[str]:
    """The PTX lines doing float64 arithmetic, math or float64 conversions (empty for a float32-only kernel)."""
    hits = []
    for line in ptx.splitlines():
        code = line.split("//", 1)[0]
        m = _F64_INSTRUCTION.match(code)
        if m and "f64" in m.group(1).split(".")[1:]:
            hits.append(code.strip())
    return hits
