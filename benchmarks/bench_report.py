"""How long `bnconf report` takes, and how many examples per second each backend judges (issue 18's targets:
the default report at most 3 minutes wall on the 2-core machine; every JAX-based adapter at least 50 judged
examples per second in the battery after warm-up).

A script, not a test:

    python benchmarks/bench_report.py                      # runs the default `bnconf report` in a temporary folder
    python benchmarks/bench_report.py --from-json reports/cpu.json   # the figures of a report already made
    python benchmarks/bench_report.py -- --examples 8      # arguments after -- go to `bnconf report`
    python benchmarks/bench_report.py --backend bnconf.adapters.jax_batchnorm:BACKENDS --cache fresh --warm-up 1
    python benchmarks/bench_report.py --in-memory bnconf.adapters.jax_batchnorm:BACKENDS

Per backend: cells run, examples judged (those with a judged element), the battery seconds of its cells
(each case's worker time, tracing and compiling included; worker start-up, edge cases and pairs excluded),
judged examples per second, and the same without the backend's first cell (which carries a child process's
start, Keras's, and first imports); then the report's wall time (when this script ran it), the distributed part's cells,
and the load average, since other work on the machine slows every figure.

"After warm-up": `--warm-up N` runs the same report N times first, so that the measured run finds every program
its JAX-based backends compile and every graph its TF1 graph-mode backends build in the caches on disk
(adapters/jax_cache.py, adapters/tf_graph_cache.py; the same seed draws the same shapes); the first run's figures
are printed too, and whether its results equal the measured run's (timings aside: a warm cache changes nothing
else). `--cache fresh` gives the whole benchmark empty caches of its own (so the first run is cold; yours are
untouched), `--cache off` none.
`--in-memory TARGET` measures instead, in this process, each backend of TARGET running its cells twice with
the same seed: the second pass finds every program compiled in memory (what a long run reaches once it meets
its shapes again), the judged examples per second of the harness and the backend's execution alone.
Results go to benchmarks/results/report.json (or --json).
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
TARGET_RATE = 50


def judged_examples(cell: dict) -> int:
    """Examples of one cell with a judged element: its coverage ({combination: [drawn, judged]})."""
    return sum(v[1] for v in (cell.get("coverage") or {}).values())


def per_backend(report: dict) -> dict[str, dict]:
    """backend -> cells run, examples judged, battery seconds, judged examples per second, and judged examples per
    second without its first cell ran (`after_first`: what a process that has started spends per example; the
    first cell carries a child process's start, e.g. Keras's, and first imports)."""
    out: dict[str, dict] = {}
    for c in report.get("cells", []):
        if c.get("status") not in ("ran", None):
            continue
        b = out.setdefault(c["backend"], {"cells": 0, "judged": 0, "seconds": 0.0, "_rest": [0, 0.0]})
        if b["cells"]:
            b["_rest"][0] += judged_examples(c)
            b["_rest"][1] += float(c.get("seconds") or 0.0)
        b["cells"] += 1
        b["judged"] += judged_examples(c)
        b["seconds"] += float(c.get("seconds") or 0.0)
    for b in out.values():
        rest_judged, rest_seconds = b.pop("_rest")
        b["seconds"] = round(b["seconds"], 2)
        b["per_second"] = round(b["judged"] / b["seconds"], 1) if b["seconds"] else None
        b["after_first"] = round(rest_judged / rest_seconds, 1) if rest_seconds else None
    return out


def run_report(extra: list[str], env: dict[str, str], keep: Path | None = None) -> tuple[dict, float]:
    """The report run in a temporary folder (its JSON copied to `keep` when given): (its JSON, wall seconds)."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        command = "import sys; from bnconf.reports.cli import main; sys.exit(main())"
        subprocess.run([sys.executable, "-c", command, "report", "--out", out, "--name", "bench", *extra],
                       check=False, stdout=subprocess.DEVNULL, env={**os.environ, **env})
        wall = time.perf_counter() - start
        text = (Path(out) / "bench.json").read_text().replace(json.dumps(out)[1:-1], "<out>")  # replay folders
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            keep.write_text(text)
        return json.loads(text), wall


def same_results(a: dict, b: dict) -> list[str]:
    """The cells whose results differ between two reports of the same seed, timings aside (a warm cache must
    change nothing but the time)."""
    def cells(report):
        return {(c["backend"], c["device"], c["dtype"], c["mode"]): {k: v for k, v in c.items() if k != "seconds"}
                for c in report.get("cells", [])}
    first, second = cells(a), cells(b)
    return [" ".join(k) for k in sorted(set(first) | set(second)) if first.get(k) != second.get(k)]


def in_memory(target: str, examples: int, seed: int) -> dict[str, dict]:
    """Each backend of `target` running its CPU cells twice in this process, the same seed both times: backend ->
    {"first": figures, "again": figures} (cells, judged, seconds, per_second), the second pass with every program
    its first one compiled still in memory."""
    from bnconf.adapters.registry import load
    from bnconf.conformance import battery, selection

    out = {}
    for backend in load(target):
        cells = selection.cells([backend], ["cpu"], [])
        passes = []
        for _ in range(2):
            judged, seconds = 0, 0.0
            for b, device, dtype, mode in cells:
                cell = battery.run_cell(b, device, dtype, mode, examples, seed)
                judged, seconds = judged + judged_examples(vars(cell)), seconds + cell.seconds
            passes.append({"cells": len(cells), "judged": judged, "seconds": round(seconds, 2),
                           "per_second": round(judged / seconds, 1) if seconds else None})
        out[backend.name] = {"first": passes[0], "again": passes[1]}
        print(f"{backend.name}: {passes[0]['per_second']} judged/s first, {passes[1]['per_second']} again "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def print_rows(title: str, rows: dict[str, dict]) -> None:
    width = max(map(len, rows), default=10)
    print(f"\n{title}\n{'backend':{width}}  cells  judged  battery s  judged/s  w/o 1st cell")
    for name, r in rows.items():
        rate = "-" if r["per_second"] is None else f"{r['per_second']:.1f}"
        rest = "-" if r.get("after_first") is None else f"{r['after_first']:.1f}"
        mark = f"  (JAX-based: target >= {TARGET_RATE})" if name.startswith(JAX_BASED) else ""
        print(f"{name:{width}}  {r['cells']:5}  {r['judged']:6}  {r['seconds']:9.1f}  {rate:>8}  {rest:>12}{mark}")


def cache_env(choice: str | None, scratch: Path) -> dict[str, str]:
    """The caches of compiled JAX programs and built TF graphs for the runs: unchanged (None), empty folders of this
    benchmark ("fresh"), "off", or folders under DIR."""
    from bnconf.adapters import jax_cache, tf_graph_cache  # neither imports a framework

    if choice is None:
        return {}
    folders = {jax_cache.ENV: "jax", tf_graph_cache.ENV: "tf-graphs"}
    if choice == "off":
        return {env: "off" for env in folders}
    base = scratch if choice == "fresh" else Path(choice)
    return {env: str(base / name) for env, name in folders.items()}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-json", type=Path, help="a report's JSON instead of running one")
    parser.add_argument("--backend", action="append", default=[], metavar="TARGET",
                        help="only these backends (passed to bnconf report; repeatable)")
    parser.add_argument("--warm-up", type=int, default=0, metavar="N",
                        help="run the report N times before the measured run (fills the caches of JAX programs and TF graphs)")
    parser.add_argument("--cache", metavar="fresh|off|DIR",
                        help="the caches of compiled JAX programs and built TF graphs of the runs (default: bnconf's "
                             "own, ~/.cache/bnconf/jax and tf-graphs; fresh: empty ones of this benchmark)")
    parser.add_argument("--in-memory", metavar="TARGET", help="measure TARGET's cells twice in this process instead")
    parser.add_argument("--examples", type=int, default=5, help="with --in-memory: examples per cell (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="with --in-memory: the seed (default 0)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="copy each report's JSON into DIR")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    common = {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
              "load_average_before": round(load_before, 2)}
    with tempfile.TemporaryDirectory() as scratch:
        env = cache_env(args.cache, Path(scratch))
        os.environ.update(env)  # --in-memory runs here
        if args.in_memory:
            rows = in_memory(args.in_memory, args.examples, args.seed)
            result = {"source": f"in memory: {args.in_memory}, {args.examples} examples per cell, seed {args.seed}",
                      "cache": args.cache, **common, "load_average_after": round(os.getloadavg()[0], 2),
                      "backends": rows}
            _write(args.json, result)
            return 0
        extra = [*(a for t in args.backend for a in ("--backend", t)), *extra]
        first = None
        for i in range(args.warm_up):
            report, wall = run_report(extra, env, args.keep and args.keep / f"warm-up-{i + 1}.json")
            if first is None:
                first = (per_backend(report), wall, report)
        if args.from_json:
            report, wall = json.loads(args.from_json.read_text()), None
        else:
            report, wall = run_report(extra, env, args.keep and args.keep / "measured.json")
    rows = per_backend(report)
    if first is not None:
        print_rows(f"first run (of {args.warm_up} warm-up run(s)): wall {first[1]:.1f} s", first[0])
        differ = same_results(first[2], report)
        print(f"\nresults of the first and the measured run, timings aside: "
              + (f"DIFFER in {len(differ)} cell(s): {'; '.join(differ[:5])}" if differ else "the same"))
    print_rows("after warm-up" if first is not None else "measured run", rows)
    replicas = report.get("replicas", [])
    print(f"\ndistributed part: {sum(c.get('status') == 'ran' for c in replicas)} of {len(replicas)} cells ran, "
          f"{sum(float(c.get('seconds') or 0) for c in replicas):.1f} s of cell time")
    if wall is not None:
        print(f"report wall time {wall:.1f} s (target <= 180 s); load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after; {os.cpu_count()} CPUs")
    result = {
        "source": str(args.from_json) if args.from_json else "bnconf report " + " ".join(extra),
        "examples_per_cell": report.get("examples"), "wall_s": None if wall is None else round(wall, 1),
        "warm_up_runs": args.warm_up, "cache": args.cache, **common,
        "load_average_after": round(os.getloadavg()[0], 2), "backends": rows,
        "distributed_cells": len(replicas),
    }
    if first is not None:
        result["first_run"] = {"wall_s": round(first[1], 1), "backends": first[0]}
        result["cells_differing_from_first_run"] = differ
    _write(args.json, result)
    return 0


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
