"""Where the test suite's CPU time goes: wall time, CPU time and the CPU floor (CPU time / cores) of
`python -m pytest -n auto`, split by the kind of process that spent it.

A script, not a test (no test depends on machine speed):

    python benchmarks/bench_suite.py [--cold] [--json OUT] [-- PYTEST ARGS]

It runs the suite (the README's test command; other pytest arguments after `--`) and samples /proc every
0.2 s: each process's CPU time (user + system) and command line. Processes are grouped by what they are
(KINDS: the xdist workers running tests in-process, isolated backend workers, replica groups, ...). `--cold`
gives the run an empty cache folder (XDG_CACHE_HOME: bnconf's JAX programs and TF graphs, matplotlib's fonts),
as on a fresh CI machine. The total comes from the kernel's account of the suite's reaped descendants
(RUSAGE_CHILDREN), which the sampling cannot miss; a process that lives under 0.2 s is missed by the split, so
the kinds add up to a little less. The CPU floor is the shortest wall time the same work could take on these
cores with nothing idle: `.ci/run`'s target (issue 18, 4 minutes with the install) is judged against it.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")

# (kind, pattern of the command line), first match wins. The suite's own xdist workers (its children, started
# as `python -c <xdist's bootstrap>`) are XDIST.
KINDS = (
    ("isolated backend workers (bnconf.conformance.isolation)", r"bnconf\.conformance\.isolation"),
    ("replica groups (bnconf.adapters.replica_group)", r"bnconf\.adapters\.replica_group"),
    ("Keras backend children (bnconf.adapters.subprocess_backend)", r"bnconf\.adapters\.subprocess_backend"),
    ("fresh-interpreter imports (tests/conformance/test_imports.py)", r"importlib\.import_module\(sys\.argv\[1\]\)"),
    ("bnconf CLI runs (python -m bnconf.reports.cli)", r"bnconf\.reports\.cli"),
    ("Chromium (tests/test_browser.py)", r"chromium"),
    ("Ray (tests/test_ray.py)", r"/ray/|raylet|gcs_server"),
    ("the CUDA kernel on CPU: compilers and instrumented builds", r"cc1plus|nvcc|cicc|ptxas|g\+\+|collect2|cuda_build"),
    ("pytest runs inside tests (tests/test_plugin.py) and their workers", r"-m pytest|exec\(eval\("),
)
XDIST = "pytest-xdist workers (tests run in-process)"


@dataclass
class Process:
    pid: int
    parent: int
    command: str
    cpu_s: float = 0.0


@dataclass
class Kind:
    name: str
    processes: int = 0
    cpu_s: float = 0.0
    largest: list = field(default_factory=list)  # [(cpu_s, command)], the five largest


def _read(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds so far) of a process, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _command(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def sample(seen: dict[int, Process], before: set[str], stop: threading.Event) -> None:
    """Record every process that was not there at the start, with the largest CPU time read for it."""
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid in before:
                continue
            read = _read(pid)
            if read is None:
                continue
            process = seen.get(int(pid))
            if process is None:
                process = seen[int(pid)] = Process(int(pid), read[0], _command(pid))
            process.cpu_s = max(process.cpu_s, read[1])
        stop.wait(0.2)


def kind_of(process: Process, suite_pid: int) -> str:
    if process.parent == suite_pid and "exec(eval(" in process.command:
        return XDIST
    return next((name for name, pattern in KINDS if re.search(pattern, process.command)), "other")


def descends_from(process: Process, root: int, seen: dict[int, Process]) -> bool:
    visited = set()
    while process.parent != root:
        visited.add(process.pid)
        process = seen.get(process.parent)
        if process is None or process.pid in visited:  # not the suite's, or a loop of reused pids
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="empty caches, as on a fresh CI machine")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default: -n auto -q)")
    args = parser.parse_args()
    env = dict(os.environ)
    cache = tempfile.TemporaryDirectory() if args.cold else None
    if cache:
        env["XDG_CACHE_HOME"] = cache.name
    seen: dict[int, Process] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(seen, set(os.listdir("/proc")), stop), daemon=True)
    sampler.start()
    start = time.monotonic()
    suite = subprocess.Popen([sys.executable, "-m", "pytest", *(args.pytest_args or ["-n", "auto", "-q"])],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = suite.communicate()
    wall = time.monotonic() - start
    stop.set()
    sampler.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    kinds: dict[str, Kind] = {}
    for process in seen.values():
        if process.pid != suite.pid and descends_from(process, suite.pid, seen):
            name = kind_of(process, suite.pid)
            kind = kinds.setdefault(name, Kind(name))
            kind.processes += 1
            kind.cpu_s += process.cpu_s
            kind.largest = sorted(kind.largest + [(round(process.cpu_s, 1), process.command[:160])], reverse=True)[:5]
    own = seen.get(suite.pid)
    cores = len(os.sched_getaffinity(0))
    result = {"command": f"python -m pytest {' '.join(args.pytest_args or ['-n', 'auto', '-q'])}",
              "cold_caches": args.cold, "cores": cores, "exit_status": suite.returncode,
              "summary": (out.strip().splitlines() or [""])[-1], "wall_s": round(wall, 1),
              "cpu_s": round(total, 1), "cpu_floor_s": round(total / cores, 1),
              "busy": round(total / cores / wall, 2), "pytest_main_cpu_s": round(own.cpu_s, 1) if own else None,
              "kinds": [dict(asdict(kind), cpu_s=round(kind.cpu_s, 1))
                        for kind in sorted(kinds.values(), key=lambda kind: -kind.cpu_s)]}
    print(f"{result['summary']}\nwall {result['wall_s']} s, CPU {result['cpu_s']} s on {cores} cores: "
          f"floor {result['cpu_floor_s']} s, busy {result['busy']:.0%}")
    for kind in result["kinds"]:
        print(f"  {kind['cpu_s']:7.1f} CPU-s  {kind['processes']:4d} processes  {kind['name']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if cache:
        cache.cleanup()


if __name__ == "__main__":
    main()
