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
import signal
import sys
import time

from ..adapters.protocol import BackendError
from ..adapters.registry import TargetError
from ..spec import InputError
from ..spec.formats import FORMATS
from .terminal import table


PARTIAL_WRITE_SHARE = 10  # the partial JSON is rewritten after a cell unless less than 10 writes' time has passed


class UsageError(ValueError):
    """Bad input to the command line, with what to change."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like bnconf's own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _bad_input() -> tuple:
    """bnconf's own errors: bad input, each with a message that names the problem and the fix."""
    from ..conformance.repro import CaseError  # imported here: `bnconf conventions` needs none of it

    return UsageError, TargetError, BackendError, InputError, CaseError


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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

    from ..conformance import battery, crosscheck, isolation, selection
    from ..conformance.discrepancies import REGISTRY
    from . import figures, render

    if args.examples < 1:
        raise UsageError(f"--examples must be 1 or more, got {args.examples}")
    if args.pair_examples < 0:
        raise UsageError(f"--pair-examples must be 0 (no cross-framework table) or more, got {args.pair_examples}")
    for option, value in (("--time-limit", args.time_limit), ("--memory-limit", args.memory_limit)):
        if not 0 < value < float("inf"):
            raise UsageError(f"{option} must be a finite number more than 0, got {value}")
    if not args.name or args.name in (".", "..") or any(sep in args.name for sep in "/\\"):
        raise UsageError(f"--name {args.name!r} is not a file name stem; give a plain name such as 'report' "
                         "(the folder goes in --out)")
    dtypes = selection.choice(args.dtype, "dtype")
    unknown = [d for d in dtypes if d not in FORMATS]
    if unknown:
        raise UsageError(f"unknown dtype {', '.join(unknown)}; pick --dtype from {', '.join(FORMATS)}")
    out = Path(args.out)
    try:  # before the battery runs: an unwritable folder must not cost a whole run
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".{args.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to {out}: {e.strerror or e}; pick another folder with --out") from e
    found, missing = selection.backends(selection.choice(args.backend, "backend"))
    devices = selection.choice(args.device, "device")
    cells = selection.cells(found, devices, dtypes)
    if not cells:
        offered = lambda attr: ", ".join(sorted({v for b in found for v in getattr(b, attr)})) or "none"  # noqa: E731
        raise UsageError(f"nothing to run: no selected backend runs on device {', '.join(devices) or 'any'} with dtype "
                         f"{', '.join(dtypes) or 'any'} (backends: {', '.join(b.name for b in found) or 'none available'}; "
                         f"they offer devices {offered('devices')} and dtypes {offered('dtypes')}); pick from those")
    for u in missing:
        print(f"unavailable: {u.name}: {u.reason}", file=sys.stderr)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (progress, kept off stdout)
    environment = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
    for b in found:
        environment.update(b.versions() if callable(getattr(b, "versions", None)) else {})
    results: list = []  # grows as cells arrive
    extras: dict = {"inferred": {}, "edge": {}}  # backend name -> rows
    pictures: dict = {}

    def report_of(pairs, status: str) -> render.Report:
        bad_pair = any(p.status == "error" or any(r.verdict == crosscheck.UNEXPECTED for r in p.rows or []) for p in pairs)
        inferred, edge = ([r for b in found for r in extras[kind].get(b.name, [])] for kind in ("inferred", "edge"))
        unexplained = any(not r["agrees"] and not r["recorded"] for r in edge)
        probe_failed = any(r["verdict"].lower() in isolation.FAILED for r in inferred)  # crashed, timed out, ...
        return render.Report(list(results), environment, args.seed, args.examples,
                             battery.conforms(results) and not bad_pair and not unexplained and not probe_failed,
                             battery.discrepancy_use(results, REGISTRY), pairs, pictures, inferred, status, len(cells), edge)

    def write(pairs, status: str = "complete") -> render.Report:
        pictures.clear()
        pictures.update({f"{args.name}-{suffix}.png": drawn for suffix, drawn in figures.render_all(results).items()})
        for file_name, (_, png) in pictures.items():
            _write_atomically(out / file_name, png)
        report = report_of(pairs, status)
        _write_atomically(out / f"{args.name}.md", render.markdown(report).encode())
        _write_atomically(out / f"{args.name}.html", render.html_page(report).encode())
        _write_atomically(out / f"{args.name}.json", render.json_document(report).encode())
        return report

    last_write = {"end": 0.0, "took": 0.0}

    def arrived(cell) -> None:  # the JSON on disk is a valid partial report as cells arrive
        results.append(cell)
        # a write costs ~0.1 s at 800 cells: rewrite unless that would take over a tenth of the run's time
        if time.monotonic() - last_write["end"] >= PARTIAL_WRITE_SHARE * last_write["took"]:
            start = time.monotonic()
            _write_atomically(out / f"{args.name}.json", render.json_document(report_of([], "running")).encode())
            last_write.update(end=time.monotonic(), took=time.monotonic() - start)

    validating = args.command == "validate"
    stop = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a cancelled job ends like Ctrl-C: workers stopped, report kept
        signal.signal(sig, _interrupt)
    try:
        limits = isolation.Limits(args.time_limit, int(args.memory_limit * 2**30))
        if args.isolation:
            isolation.run_isolated(cells, args.examples, args.seed, limits, out / f"{args.name}-crashes", say, arrived,
                                   infer=validating, edge=args.edge_cases, extras=extras)
        else:
            battery.run_battery(cells, args.examples, args.seed, progress=say, on_cell=arrived)
            for b in found:
                ran = [c[1:] for c in cells if c[0] is b]
                for kind, rows in isolation.extras_for(b, ran, validating, args.edge_cases).items():
                    extras[kind][b.name] = rows
        report = write([], "running" if args.pair_examples else "complete")  # on disk before the pairs run
        if args.pair_examples:
            failed = {c.backend for c in results if c.status in isolation.FAILED}
            usable = [b for b in found if b.name not in failed]  # a backend that crashed is not run again here
            if args.isolation:
                pairs = isolation.run_matrix_isolated(usable, args.pair_examples, args.seed, limits, progress=say)
            else:
                pairs = crosscheck.run_matrix(usable, args.pair_examples, args.seed, progress=say)
            report = write(pairs)
    except KeyboardInterrupt:
        report = write([], "interrupted")
        print(render.terminal(report))
        print(f"\ninterrupted after {len(results)} of {len(cells)} cells; partial report written to "
              f"{out}/{args.name}.{{md,html,json}}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, stop[0])
        signal.signal(signal.SIGHUP, stop[1])
    ok = report.conforms
    print(render.terminal(report))
    print(f"\n{'conforms' if ok else 'NON-CONFORMANT'}; report written to {out}/{args.name}.{{md,html,json}}")
    return 0 if ok else 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _write_atomically(path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _replay(args) -> int:
    from ..conformance.repro import print_replay

    return print_replay(args.folder)  # a folder that is not a saved case raises CaseError, naming what is wrong


def _battery_options(parser, name: str, examples: int, pair_examples: int) -> None:
    parser.add_argument("--device", action="append", default=[], help="only these devices (repeatable)")
    parser.add_argument("--dtype", action="append", default=[], help="only these dtypes (repeatable)")
    parser.add_argument("--examples", type=int, default=examples, help=f"Hypothesis examples per cell (default {examples})")
    parser.add_argument("--pair-examples", type=int, default=pair_examples,
                        help=f"examples per backend pair and mode in the cross-framework table (0: skip it; default {pair_examples})")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same report (default 0)")
    parser.add_argument("--out", default="reports", help="folder for the report files (default reports/)")
    parser.add_argument("--name", default=name, help=f"file name stem (default {name})")
    parser.add_argument("--time-limit", type=float, default=120.0, metavar="SECONDS",
                        help="stop a backend whose case runs longer than this, report it as timed out (default 120)")
    parser.add_argument("--memory-limit", type=float, default=8.0, metavar="GIB",
                        help="stop a backend holding more resident memory than this (default 8 GiB)")
    parser.add_argument("--no-edge-cases", dest="edge_cases", action="store_false",
                        help="skip the edge-case behaviour table (spec/edge_cases.py)")
    parser.add_argument("--no-isolation", dest="isolation", action="store_false",
                        help="run every backend in this process (no crash, time or memory protection)")


def _validate(args) -> int:
    """`bnconf report` on exactly the named target, deeper by default (20 examples per cell)."""
    args.backend = [args.target]
    return _report(args)


def _problem(e: Exception) -> str:
    """One line that names what went wrong and what to do about it."""
    if isinstance(e, _bad_input()):
        return _one_line(e)
    if isinstance(e, OSError):
        return (f"cannot write or read {e.filename or 'a file'}: {e.strerror or e}; "
                "check the path, its permissions and the free space")
    return f"internal error: {type(e).__name__}: {_one_line(e)}; rerun with --debug and report it"


def main(argv=None) -> int:
    """Run one command; its exit status. Bad input: one line on stderr and exit 2 (--debug: the traceback)."""
    debug = argparse.ArgumentParser(add_help=False)  # --debug after the command too (SUPPRESS keeps one given before)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    parser = _Parser(prog="bnconf", description="Batch Normalization conformance checker")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", parents=[debug], help="run the conformance battery and write the discrepancy report")
    report.add_argument("--backend", action="append", default=[], metavar="TARGET",
                        help="module:attribute or path.py:attribute (repeatable); default: every available backend")
    _battery_options(report, name="report", examples=5, pair_examples=2)
    report.set_defaults(run=_report)
    validate = sub.add_parser("validate", parents=[debug],
                              help="run the whole battery on one backend (yours): exit 0 when it conforms")
    validate.add_argument("target", metavar="TARGET", help="module:attribute or path/to/file.py:attribute naming the backend(s)")
    _battery_options(validate, name="validate", examples=20, pair_examples=0)
    validate.set_defaults(run=_validate)
    replay = sub.add_parser("replay", parents=[debug], help="rerun a failing case saved by the test suite")
    replay.add_argument("folder", help="a folder written by a failing conformance test (bnconf-repro/...)")
    replay.set_defaults(run=_replay)
    sub.add_parser("selfcheck", parents=[debug],
                   help="check the oracle against independent computations").set_defaults(run=_selfcheck)
    sub.add_parser("conventions", parents=[debug], help="list the convention records").set_defaults(run=_conventions)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Exception as e:  # a backend's own failure never gets here: the battery reports it as a cell error
        if args.debug:
            raise
        print(f"bnconf {args.command}: error: {_problem(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
