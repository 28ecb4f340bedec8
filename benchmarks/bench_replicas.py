"""How long the distributed part of the default `bnconf report` takes (issue 17: at most 90 s on the 2-core machine).

A script, not a test (the tests assert what the distributed part finds, never how fast):

    python benchmarks/bench_replicas.py [--examples N] [--world-sizes 1 2 3 4] [--dtypes float32 float64] [--json OUT]

It runs what `bnconf report` runs for its distributed part (conformance/run.py `run_distributed`: every
replica backend `discover_replicas` finds, the default examples per cell, world sizes and dtype), timing every
`step` call: per backend the first call (worker start-up, imports, process groups or meshes, first compile),
the steady state (median of the later calls: a new shape's compile included where it happens) and its cells'
wall time, then the total wall time of the part. The load average is printed beside it: other work on the
machine slows every figure. Results go to benchmarks/results/replicas.json (or --json).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "replicas.json"


def timed(backend, calls: list) -> None:
    """Wrap backend.step so that each call's seconds are appended to `calls`."""
    step = backend.step

    def wrapped(request):
        start = time.perf_counter()
        try:
            return step(request)
        finally:
            calls.append(time.perf_counter() - start)

    backend.step = wrapped


def main(argv=None) -> int:
    from bnconf.adapters.replica_registry import discover_replicas
    from bnconf.conformance import run
    from bnconf.conformance import isolation
    from bnconf.conformance.replica_cases import DEFAULT_WORLD_SIZES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=run.REPLICA_EXAMPLES)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=list(DEFAULT_WORLD_SIZES))
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: the report's (float32, float64)")
    parser.add_argument("--pair-examples", type=int, default=2, help="synchronized pairs (the report's default 2)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    start = time.perf_counter()
    backends, unavailable = discover_replicas()
    calls = {b.name: [] for b in backends}
    for b in backends:
        timed(b, calls[b.name])
    options = run.RunOptions(examples=1, seed=0, pair_examples=args.pair_examples, limits=isolation.Limits(),
                             replicas=True, world_sizes=tuple(args.world_sizes), replica_examples=args.examples,
                             replica_dtypes=tuple(args.dtypes or ()))
    state = run.RunState(0)
    with tempfile.TemporaryDirectory() as cases:
        run.run_distributed(options, state, Path(cases), replica_backends=backends)
    cells = state.replica_cells
    total = time.perf_counter() - start
    load_after = os.getloadavg()

    rows = {}
    for b in backends:
        mine = [c for c in cells if c.backend == b.name]
        seconds = calls[b.name]
        rows[b.name] = {
            "cells": len(mine), "ran": sum(c.status == "ran" for c in mine),
            "statuses": sorted({c.status for c in mine}),
            "steps": len(seconds),
            "first_call_s": round(seconds[0], 3) if seconds else None,
            "steady_median_s": round(statistics.median(seconds[1:]), 4) if len(seconds) > 1 else None,
            "cells_wall_s": round(sum(c.seconds for c in mine), 3),
        }
    width = max(len(n) for n in rows) if rows else 10
    print(f"{'backend':{width}}  cells  ran  steps  first call  steady (median)  cells wall")
    for name, r in rows.items():
        first = "-" if r["first_call_s"] is None else f"{r['first_call_s']:.2f} s"
        steady = "-" if r["steady_median_s"] is None else f"{r['steady_median_s']:.3f} s"
        print(f"{name:{width}}  {r['cells']:5}  {r['ran']:3}  {r['steps']:5}  {first:>10}  {steady:>15}  "
              f"{r['cells_wall_s']:8.2f} s")
    for u in unavailable:
        print(f"unavailable: {u.name}: {u.reason}")
    print(f"pairs: {len(state.replica_pairs)} settings of synchronized backends against each other")
    print(f"\ntotal {total:.1f} s for {len(cells)} cells, {args.examples} example(s) each, and the pairs "
          f"(target <= 90 s); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"{os.cpu_count()} CPUs")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "examples": args.examples, "world_sizes": args.world_sizes,
        "dtypes": args.dtypes or "default (float32, float64 where declared)",
        "total_s": round(total, 2),
        "cells": len(cells), "pair_settings": len(state.replica_pairs), "pair_examples": args.pair_examples, "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "load_average_before": round(load_before[0], 2), "load_average_after": round(load_after[0], 2),
        "backends": rows, "unavailable": {u.name: u.reason for u in unavailable},
    }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
