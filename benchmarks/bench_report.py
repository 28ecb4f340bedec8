"""How long `bnconf report` takes, and how many examples per second each backend judges (issue 18's targets:
the default report at most 3 minutes wall on the 2-core machine; every JAX-based adapter at least 50 judged
examples per second in the battery).

A script, not a test:

    python benchmarks/bench_report.py                      # runs the default `bnconf report` in a temporary folder
    python benchmarks/bench_report.py --from-json reports/cpu.json   # the figures of a report already made
    python benchmarks/bench_report.py -- --examples 8      # arguments after -- go to `bnconf report`

Per backend: cells run, examples judged (those with a judged element), the battery seconds of its cells
(each case's worker time, start-up included, edge cases and pairs excluded) and judged examples per second;
then the report's wall time (when this script ran it), the distributed part's cells, and the load average,
since other work on the machine slows every figure. Results go to benchmarks/results/report.json (or --json).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "report.json"
JAX_BASED = ("flax.", "haiku.", "equinox.", "keras.layers.BatchNormalization[jax")  # the 50 examples/s target


def judged_examples(cell: dict) -> int:
    """Examples of one cell with a judged element: its coverage ({combination: [drawn, judged]})."""
    return sum(v[1] for v in (cell.get("coverage") or {}).values())


def per_backend(report: dict) -> dict[str, dict]:
    """backend -> cells run, examples judged, battery seconds, judged examples per second."""
    out: dict[str, dict] = {}
    for c in report.get("cells", []):
        if c.get("status") not in ("ran", None):
            continue
        b = out.setdefault(c["backend"], {"cells": 0, "judged": 0, "seconds": 0.0})
        b["cells"] += 1
        b["judged"] += judged_examples(c)
        b["seconds"] += float(c.get("seconds") or 0.0)
    for b in out.values():
        b["seconds"] = round(b["seconds"], 2)
        b["per_second"] = round(b["judged"] / b["seconds"], 1) if b["seconds"] else None
    return out


def run_report(extra: list[str]) -> tuple[dict, float]:
    """The default report run in a temporary folder: (its JSON, wall seconds)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        command = "import sys; from bnconf.reports.cli import main; sys.exit(main())"
        subprocess.run([sys.executable, "-c", command, "report", "--out", out, "--name", "bench", *extra],
                       check=False, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        return json.loads((Path(out) / "bench.json").read_text()), wall


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", type=Path, help="a report's JSON instead of running one")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    if args.from_json:
        report, wall = json.loads(args.from_json.read_text()), None
    else:
        report, wall = run_report(extra)
    rows = per_backend(report)
    width = max(map(len, rows), default=10)
    print(f"{'backend':{width}}  cells  judged  battery s  judged/s")
    for name, r in rows.items():
        rate = "-" if r["per_second"] is None else f"{r['per_second']:.1f}"
        mark = "  (JAX-based: target >= 50)" if name.startswith(JAX_BASED) else ""
        print(f"{name:{width}}  {r['cells']:5}  {r['judged']:6}  {r['seconds']:9.1f}  {rate:>8}{mark}")
    replicas = report.get("replicas", [])
    print(f"\ndistributed part: {sum(c.get('status') == 'ran' for c in replicas)} of {len(replicas)} cells ran, "
          f"{sum(float(c.get('seconds') or 0) for c in replicas):.1f} s of cell time")
    if wall is not None:
        print(f"report wall time {wall:.1f} s (target <= 180 s); load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after; {os.cpu_count()} CPUs")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "source": str(args.from_json) if args.from_json else "bnconf report " + " ".join(extra),
        "examples_per_cell": report.get("examples"), "wall_s": None if wall is None else round(wall, 1),
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "load_average_before": round(load_before, 2), "backends": rows,
        "distributed_cells": len(replicas),
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
