"""The `bnconf` command line.

    bnconf report         run the conformance battery over every available backend, write the report
    bnconf validate T     the whole battery on one backend named module:attr or file.py:attr (exit 0: conforms)
    bnconf replay DIR     rerun a failing case the test suite saved as a folder
    bnconf selfcheck      check the float64 oracle against independent computations (exit 0 / 1)
    bnconf conventions    list every framework convention record

Exit status: 0 success, 1 a check failed or a backend does not conform, 2 bad input (one line; --debug
shows the traceback).
"""

import argparse
import sys

from ..adapters.protocol import BackendError
from ..adapters.registry import TargetError
from ..spec.formats import FORMATS
from .terminal import table


class UsageError(ValueError):
    """Bad input to the command line, with what to change."""


def _selfcheck(args) -> int:
    from ..conformance.selfcheck import run_selfcheck

    results = run_selfcheck()
    print("bnconf selfcheck: the float64 oracle and the error model against independent computations\n")
    print(table(["check", "cases", "worst", "result"],
                [[r.name, r.cases, r.worst, "ok" if r.ok else "FAILED"] for r in results]))
    failed = [r.name for r in results if not r.ok]
    print(f"\n{len(results) - len(failed)} of {len(results)} checks hold.")
    return 1 if failed else 0


def _conventions(args) -> int:
    from ..spec import CONVENTIONS

    rows = [[c.name, c.default_eps, c.default_momentum, c.momentum_style.value if c.tracks_running_stats else "-",
             c.running_var.value if c.tracks_running_stats else "-", c.channel_axis] for c in CONVENTIONS.values()]
    print(table(["convention", "eps", "momentum", "momentum weights", "running var", "axis"], rows))
    return 0


def _report(args) -> int:
    import platform
    from pathlib import Path

    import numpy as np

    from ..conformance import battery, crosscheck, selection
    from ..conformance.discrepancies import REGISTRY
    from . import figures, render

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".{args.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        print(f"bnconf report: cannot write to {out}: {e.strerror or e}; pick another folder with --out", file=sys.stderr)
        return 2
    if args.examples < 1:
        raise UsageError(f"--examples must be 1 or more, got {args.examples}")
    if args.pair_examples < 0:
        raise UsageError(f"--pair-examples must be 0 (no cross-framework table) or more, got {args.pair_examples}")
    dtypes = selection.choice(args.dtype, "dtype")
    unknown = [d for d in dtypes if d not in FORMATS]
    if unknown:
        raise UsageError(f"unknown dtype {', '.join(unknown)}: bnconf knows {', '.join(FORMATS)}")
    found, missing = selection.backends(selection.choice(args.backend, "backend"))
    cells = selection.cells(found, selection.choice(args.device, "device"), dtypes)
    if not cells:
        raise UsageError("nothing to run: no selected backend supports the selected devices and dtypes "
                         f"(backends: {', '.join(b.name for b in found) or 'none available'})")
    for u in missing:
        print(f"unavailable: {u.name}: {u.reason}", file=sys.stderr)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (progress, kept off stdout)
    results = battery.run_battery(cells, args.examples, args.seed, progress=say)
    environment = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
    for b in found:
        environment.update(b.versions() if callable(getattr(b, "versions", None)) else {})

    pictures = {f"{args.name}-{suffix}.png": drawn for suffix, drawn in figures.render_all(results).items()}
    for file_name, (_, png) in pictures.items():
        (out / file_name).write_bytes(png)

    inferred = _inferred(found) if args.command == "validate" else []

    def write(pairs) -> render.Report:
        bad_pair = any(p.status == "error" or any(r.verdict == crosscheck.UNEXPECTED for r in p.rows or []) for p in pairs)
        report = render.Report(results, environment, args.seed, args.examples, battery.conforms(results) and not bad_pair,
                               battery.discrepancy_use(results, REGISTRY), pairs, pictures, inferred)
        (out / f"{args.name}.md").write_text(render.markdown(report))
        (out / f"{args.name}.html").write_text(render.html_page(report))
        (out / f"{args.name}.json").write_text(render.json_document(report))
        return report

    report = write([])  # the battery's results are on disk before the cross-framework table runs
    if args.pair_examples:
        report = write(crosscheck.run_matrix(found, args.pair_examples, args.seed, progress=say))
    ok = report.conforms
    print(render.terminal(report))
    print(f"\n{'conforms' if ok else 'NON-CONFORMANT'}; report written to {out}/{args.name}.{{md,html,json}}")
    return 0 if ok else 1


def _replay(args) -> int:
    from pathlib import Path

    from ..conformance.repro import print_replay

    if not (Path(args.folder) / "case.json").is_file():
        raise UsageError(f"{args.folder} is not a saved case (no case.json there)")
    return print_replay(args.folder)


def _battery_options(parser, name: str, examples: int, pair_examples: int) -> None:
    parser.add_argument("--device", action="append", default=[], help="only these devices (repeatable)")
    parser.add_argument("--dtype", action="append", default=[], help="only these dtypes (repeatable)")
    parser.add_argument("--examples", type=int, default=examples, help=f"Hypothesis examples per cell (default {examples})")
    parser.add_argument("--pair-examples", type=int, default=pair_examples,
                        help=f"examples per backend pair and mode in the cross-framework table (0: skip it; default {pair_examples})")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same report (default 0)")
    parser.add_argument("--out", default="reports", help="folder for the report files (default reports/)")
    parser.add_argument("--name", default=name, help=f"file name stem (default {name})")


def _inferred(backends) -> list[dict]:
    """Convention inference on each backend (its first device that runs now), as report rows."""
    from ..adapters.protocol import unavailable
    from ..conformance.inference import infer

    rows = []
    for b in backends:
        device = next((d for d in b.devices if not unavailable(b, d)), None)
        if device is None:
            continue
        try:
            inference = infer(b, device)
        except Exception as e:  # probing is advice: a backend it cannot probe still gets its battery verdict
            rows.append(dict(backend=b.name, property="-", value=None, agrees=False, candidates={},
                             evidence=f"probing failed: {type(e).__name__}: {e}"))
            continue
        agrees = inference.matches(b.convention)
        rows += [dict(backend=b.name, property=prop, value=str(getattr(f.value, "value", f.value)), agrees=agrees.get(prop, True),
                      evidence=f.evidence, candidates={str(k): float(v) for k, v in f.candidates.items()})
                 for prop, f in inference.findings.items()]
    return rows


def _validate(args) -> int:
    """`bnconf report` on exactly the named target, deeper by default (20 examples per cell)."""
    args.backend = [args.target]
    return _report(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bnconf", description="Batch Normalization conformance checker")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="run the conformance battery and write the discrepancy report")
    report.add_argument("--backend", action="append", default=[], metavar="TARGET",
                        help="module:attribute or path.py:attribute (repeatable); default: every available backend")
    _battery_options(report, name="report", examples=5, pair_examples=2)
    report.set_defaults(run=_report)
    validate = sub.add_parser("validate", help="run the whole battery on one backend (yours): exit 0 when it conforms")
    validate.add_argument("target", metavar="TARGET", help="module:attribute or path/to/file.py:attribute naming the backend(s)")
    _battery_options(validate, name="validate", examples=20, pair_examples=0)
    validate.set_defaults(run=_validate)
    replay = sub.add_parser("replay", help="rerun a failing case saved by the test suite")
    replay.add_argument("folder", help="a folder written by a failing conformance test (bnconf-repro/...)")
    replay.set_defaults(run=_replay)
    sub.add_parser("selfcheck", help="check the oracle against independent computations").set_defaults(run=_selfcheck)
    sub.add_parser("conventions", help="list the convention records").set_defaults(run=_conventions)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, TargetError, BackendError) as e:
        if args.debug:
            raise
        print(f"bnconf {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
