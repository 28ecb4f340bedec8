"""How long Ctrl-C takes to end a `bnconf report`, idle and on a loaded machine.

A script, not a test (the tests assert what Ctrl-C leaves behind, never how fast):

    python benchmarks/bench_interrupt.py [--runs 5] [--load 4] [--json OUT]

Each run starts `bnconf report` on a backend whose training forward hangs (tests/fixtures/misbehaving.py:HANG),
waits until its other cells are in the partial JSON and its worker is inside the hang, sends SIGINT, and
measures from the signal to (a) the JSON on disk marked "interrupted" and (b) the process exit (the Markdown,
HTML and figures rendered). `--load N` runs N busy-looping processes beside it the whole time (the CI
machine has 2 cores: 4 burners leave the run a third of a core). The target (issue 14): the run ends, its
JSON marked interrupted, within 2 s on a loaded machine.
"""

import argparse
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HANG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "misbehaving.py"


def _burn() -> None:
    while True:
        pass


def _status(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def one_run() -> tuple[float, float]:
    """(seconds from SIGINT to the JSON marked interrupted, seconds from SIGINT to the exit)."""
    with tempfile.TemporaryDirectory() as out:
        report = Path(out) / "report.json"
        proc = subprocess.Popen([sys.executable, "-m", "bnconf.reports.cli", "report", "--backend", f"{HANG}:HANG",
                                 "--examples", "2", "--pair-examples", "0", "--time-limit", "600", "--out", out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len((_status(report) or {}).get("cells", [])) < 3:
            time.sleep(0.05)
        time.sleep(1.0)  # the worker is inside the hang
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        marked = None
        while proc.poll() is None or marked is None:
            if marked is None and (_status(report) or {}).get("status") == "interrupted":
                marked = time.monotonic() - start
            time.sleep(0.01)
        exited = time.monotonic() - start
        return marked, exited


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load", type=int, default=4, help="busy processes beside the run (0: idle)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    figures = {}
    for load in sorted({0, args.load}):
        burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(load)]
        for b in burners:
            b.start()
        try:
            runs = [one_run() for _ in range(args.runs)]
        finally:
            for b in burners:
                b.kill()
        marked, exited = zip(*runs)
        figures[f"load {load}"] = {"json_interrupted_s": {"median": statistics.median(marked), "max": max(marked)},
                                   "exit_s": {"median": statistics.median(exited), "max": max(exited)}}
        print(f"{os.cpu_count()} cores, {load} busy processes beside it, {args.runs} runs: JSON marked interrupted "
              f"after {statistics.median(marked):.2f} s median ({max(marked):.2f} s max); exit after "
              f"{statistics.median(exited):.2f} s median ({max(exited):.2f} s max)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
