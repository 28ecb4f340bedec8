"""The `bnconf` command line.

    bnconf report         run the conformance battery over every available backend, write the report
    bnconf validate T     the whole battery on one backend named module:attr or file.py:attr (exit 0: conforms)
    bnconf replay DIR     rerun a failing case the test suite saved as a folder
    bnconf selfcheck      check the float64 oracle against independent computations (exit 0 / 1)
    bnconf conventions    list every framework convention record
    bnconf diff OLD NEW   what changed between two report JSONs (exit 1: NEW has a regression)
    bnconf merge A B ...  reports made in several environments as one report (exit 1: something fails)

Exit status: 0 success, 1 a check failed or a backend does not conform, 2 bad input (one line; --debug
shows the traceback).
"""

import argparse
import dataclasses
import os
import signal
import sys
import traceback
from contextlib import contextmanager

from ..adapters.protocol import BackendError
from ..adapters.registry import TargetError
from ..spec import InputError
from ..spec.formats import FORMATS
from . import diff_command, merge_command
from .terminal import table


class UsageError(ValueError):
    """Bad input to the command line, with what to change."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like bnconf's own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _bad_input() -> tuple:
    """bnconf's own errors: bad input, each with a message that names the problem and the fix."""
    from ..conformance.repro import CaseError  # imported here: `bnconf conventions` needs none of it
    from ..conformance.user_records import RecordsError
    from .output import OutputError
    from .report_file import ReportFileError

    return UsageError, TargetError, BackendError, InputError, CaseError, OutputError, RecordsError, ReportFileError


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


MAX_EXAMPLES = 100_000  # per cell or pair: beyond this a run takes days; split it over --seed values instead
MAX_WORLD_SIZE = 8  # replicas per distributed cell: each is a worker process (or a host device)


def world_sizes(text: str) -> tuple[int, ...]:
    """--world-sizes "1,2,4" as (1, 2, 4), sorted, each once; UsageError naming the fix for anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() and 1 <= int(p) <= MAX_WORLD_SIZE for p in parts):
        raise UsageError(f"--world-sizes must be a comma-separated list of replica counts from 1 to {MAX_WORLD_SIZE}, "
                         f"got {text!r}; pick e.g. --world-sizes 1,2,3,4")
    return tuple(sorted({int(p) for p in parts}))


def shard_spec(text: str) -> tuple[int, int]:
    """--shard "K/N" as (K, N) with 1 <= K <= N; UsageError naming the fix for anything else."""
    k, slash, n = str(text).strip().partition("/")
    if not (slash and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise UsageError(f"--shard must be K/N, shard K of N with 1 <= K <= N, got {text!r}; "
                         "pick e.g. --shard 1/2 on one machine and --shard 2/2 on another")
    return int(k), int(n)


def _replicas_on(args, selected: list[str]) -> bool:
    """The distributed part runs in `bnconf report` (not validate): by default when no backend was selected
    (the full report), else when --replicas asks for it."""
    wanted = getattr(args, "replicas", False)
    return bool(not selected if wanted is None else wanted)


def _replica_backends(targets: list[str]) -> list | None:
    """The replica backends --replica-backend names (TargetError, bad input, for one that does not load or does not
    implement adapters/replica_protocol.py); None when none is named (every built-in one runs)."""
    if not targets:
        return None
    from ..adapters.registry import check_unique_names
    from ..adapters.replica_registry import load_replicas

    backends = [b for t in targets for b in load_replicas(t)]
    check_unique_names(backends, "--replica-backend")
    return backends


def available_cores() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _check_battery_options(args) -> None:
    """Raise UsageError for an option value the battery cannot run with, naming the fix."""
    if not 1 <= args.examples <= MAX_EXAMPLES:
        raise UsageError(f"--examples must be between 1 and {MAX_EXAMPLES}, got {args.examples}; "
                         f"pick e.g. --examples 5 (more runs can use other --seed values)")
    if not 0 <= args.pair_examples <= MAX_EXAMPLES:
        raise UsageError(f"--pair-examples must be between 0 (no cross-framework table) and {MAX_EXAMPLES}, "
                         f"got {args.pair_examples}; pick e.g. --pair-examples 2")
    if args.ray and not args.isolation:
        raise UsageError("--ray runs every backend in a worker on the cluster, --no-isolation in this process; "
                         "drop one of the two")
    if args.jobs is not None and not 1 <= args.jobs <= 1024:
        raise UsageError(f"--jobs must be a number of workers from 1 to 1024, got {args.jobs}; pick e.g. "
                         f"--jobs {available_cores()} (the cores available here)")
    for option, value, unit in (("--time-limit", args.time_limit, "seconds per case, e.g. --time-limit 120"),
                                ("--memory-limit", args.memory_limit, "GiB, e.g. --memory-limit 8")):
        if not 0 < value < float("inf"):
            raise UsageError(f"{option} must be a finite number more than 0, got {value}; give it in {unit}")


def _report(args) -> int:
    import platform
    from pathlib import Path

    import numpy as np

    from ..conformance import isolation, run, selection
    from .output import ReportFolder
    from .publish import Publisher

    _check_battery_options(args)
    shard = None if getattr(args, "shard", None) is None else shard_spec(args.shard)
    dtypes = selection.choice(args.dtype, "dtype")
    unknown = [d for d in dtypes if d not in FORMATS]
    if unknown:
        raise UsageError(f"unknown dtype {', '.join(unknown)}; pick --dtype from {', '.join(FORMATS)}")
    selected = selection.choice(args.backend, "backend")
    replicas = _replicas_on(args, selected)
    sizes = world_sizes(getattr(args, "world_sizes", "1,2,3,4"))
    replica_backends = _replica_backends(getattr(args, "replica_backend", []))
    if replica_backends is not None:
        replicas = True
    only_replicas = replica_backends is not None and not selected  # a replica backend alone: the distributed part only
    found, missing = ([], []) if only_replicas else selection.backends(selected)
    devices = selection.choice(args.device, "device")
    cells = selection.cells(found, devices, dtypes)
    if not cells and not only_replicas:
        offered = lambda attr: ", ".join(sorted({v for b in found for v in getattr(b, attr)})) or "none"  # noqa: E731
        raise UsageError(f"nothing to run: no selected backend runs on device {', '.join(devices) or 'any'} with dtype "
                         f"{', '.join(dtypes) or 'any'} (backends: {', '.join(b.name for b in found) or 'none available'}; "
                         f"they offer devices {offered('devices')} and dtypes {offered('dtypes')}); pick from those")
    if shard:  # a slice of the cells; the distributed part and the pairs only in shard 1 (once over the N shards)
        everything = len(cells)
        cells = selection.shard(cells, *shard)
        replicas, args.pair_examples = (replicas, args.pair_examples) if shard[0] == 1 else (False, 0)
        print(f"shard {shard[0]}/{shard[1]}: {len(cells)} of {everything} cells"
              + ("" if shard[0] == 1 else "; the distributed part and the pairs run in shard 1"), file=sys.stderr)
    options = run.RunOptions(args.examples, args.seed, args.pair_examples,
                             isolation.Limits(args.time_limit, int(args.memory_limit * 2**30)),
                             isolated=args.isolation, infer=args.command == "validate", edge_cases=args.edge_cases,
                             records=tuple(args.records), replicas=replicas, world_sizes=sizes,
                             replica_dtypes=tuple(dtypes))
    run.prepare(found, options)  # a records file or record that does not hold is bad input, found here
    cluster = _connect(args.ray) if args.ray else None  # unreachable: bad input, before the run
    jobs = args.jobs or (cluster.slots if cluster else available_cores())
    options = dataclasses.replace(options, jobs=jobs if args.isolation else 1,
                                  supervise=cluster.supervise if cluster else None)
    # only now, when the run will start, is the output folder claimed: its previous report goes with the claim
    folder = ReportFolder(Path(args.out), args.name)
    folder.claim()  # an unwritable folder or a concurrent run is found before the battery runs
    try:
        for u in missing:
            print(f"unavailable: {u.name}: {u.reason}", file=sys.stderr)
        environment = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
                       "host": platform.node()}
        for b in found:
            environment.update(b.versions() if callable(getattr(b, "versions", None)) else {})
        state = run.RunState(len(cells))
        publisher = Publisher(folder, args.name, state, found, environment, args.seed, args.examples,
                              lambda s: run.failures(s, found), shard=f"{shard[0]}/{shard[1]}" if shard else "")
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (progress, kept off stdout)
        with _signals_interrupt() as caught:
            try:
                publisher.write_json("running")  # from the start, the folder holds this run's report, partial
                run.execute(found, cells, options, state, folder.crash_dir, folder.cases_dir, say, publisher.arrived,
                            publisher.idle, replica_backends=replica_backends)
                report = publisher.write_all("complete")
            except KeyboardInterrupt:
                return _interrupted(publisher, state, folder.out, args.name, caught)
    finally:
        folder.release()
        if cluster:
            cluster.close()
    print(render_terminal(report))
    reasons = run.failures(state, found)
    written = (f"report written to {folder.out}/{args.name}.{{md,html,json}} (the summary: {args.name}.md; every row, "
               f"filterable: {args.name}.html)")
    if reasons:
        print(f"\nNON-CONFORMANT ({len(reasons)} failing result(s), the findings listed under the summary at the top; "
              f"first: {reasons[0]}); {written}")
        return 1
    print(f"\nconforms; {written}")
    return 0


def _connect(address: str):
    """The Ray cluster at `address` (conformance/ray_cluster.py); one line, exit 2, when it cannot be reached."""
    from ..conformance import ray_cluster

    try:
        return ray_cluster.connect(address)
    except ray_cluster.ClusterError as e:
        raise UsageError(str(e)) from e


def render_terminal(report) -> str:
    from . import render

    return render.terminal(report)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _signals_interrupt():
    """SIGTERM and SIGHUP end a run like Ctrl-C (a cancelled job's workers are stopped, its report kept).
    A signal the run was started with ignored stays ignored (`nohup` ignores SIGHUP, a script's background
    job SIGINT)."""
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    caught = [sig for sig, handler in before.items() if handler is not signal.SIG_IGN]
    for sig in caught:
        signal.signal(sig, _interrupt)
    try:
        yield caught
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _interrupted(publisher, state, out, name: str, caught) -> int:
    """The first Ctrl-C: the JSON marked "interrupted" is written with further signals held off (a moment),
    then the other formats; a second Ctrl-C during those exits at once, the JSON already complete.
    `caught`: the signals the run handles (the caller restores them afterwards)."""
    for sig in caught:
        signal.signal(sig, signal.SIG_IGN)
    publisher.write_json("interrupted")
    where = f"{out}/{name}.json"
    for sig in caught:
        signal.signal(sig, lambda *_: _exit_now(f"interrupted again; the partial report is {where}"))
    report = publisher.write_all("interrupted", with_figures=False)
    print(render_terminal(report))
    distributed = len(getattr(state, "replica_cells", []))
    print(f"\ninterrupted during the {state.phase.value} after {len(state.results)} of {state.cells_planned} cells"
          + (f", {distributed} distributed cells" if distributed else "")
          + f" and {len(state.pairs)} pairs; partial report written to {out}/{name}.{{md,html,json}}", file=sys.stderr)
    return 130


def _exit_now(message: str) -> None:
    sys.stderr.write(f"bnconf: {message}\n")
    sys.stderr.flush()
    os._exit(130)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _replay(args) -> int:
    from ..conformance.repro import replay

    if not 0 < args.time_limit < float("inf"):
        raise UsageError(f"--time-limit must be a finite number more than 0, got {args.time_limit:g}; "
                         "give it in seconds, e.g. --time-limit 120")
    return replay(args.folder, args.backend, args.time_limit, trust_folder_target=args.trust_target,
                  records=args.records)


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
    parser.add_argument("--records", action="append", default=[], metavar="FILE.py:ATTR",
                        help="your own known discrepancies and edge behaviours: path/to/records.py:ATTR or module:attr "
                             "naming KnownDiscrepancy / EdgeRecord entries (bnconf.conformance.records); repeatable")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="isolated backend workers at once (default: the cores available here, "
                             f"{available_cores()}; with --ray: the cluster's CPUs); each worker keeps its own "
                             "--memory-limit; the same seed gives the same report whatever N")
    parser.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                        help="run each unit of work (a backend's cells on one device with its edge cases, a batch of "
                             "cross-framework pairs) as a task on a Ray cluster: 'auto' (the cluster this machine "
                             "belongs to) or HOST:PORT; needs the bnconf[ray] extra")


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
    report.add_argument("--replicas", action=argparse.BooleanOptionalAction, default=None,
                        help="the distributed part: every replica backend (synchronized and per-replica batch norm "
                             "across worker processes) at each world size and split (default: on, unless --backend "
                             "selects backends)")
    report.add_argument("--replica-backend", action="append", default=[], metavar="TARGET",
                        help="a replica backend (adapters/replica_protocol.py: yours, as module:attribute or "
                             "path.py:attribute; repeatable): the distributed part runs it instead of the built-in ones "
                             "(and, without --backend, alone)")
    report.add_argument("--world-sizes", default="1,2,3,4", metavar="1,2,3,4",
                        help=f"replica counts of the distributed part, from 1 to {MAX_WORLD_SIZE} (default 1,2,3,4)")
    report.add_argument("--shard", default=None, metavar="K/N",
                        help="run only shard K of N (K from 1 to N): a deterministic slice of the cells, chosen by a "
                             "stable hash of backend, device, dtype and mode, so that --shard 1/N ... N/N on N machines "
                             "run every cell exactly once whatever else each has installed; the distributed part and "
                             "the cross-framework pairs run only in shard 1; edge cases run in each shard for the "
                             "backends, devices and dtypes it holds")
    report.set_defaults(run=_report)
    validate = sub.add_parser("validate", parents=[debug],
                              help="run the whole battery on one backend (yours): exit 0 when it conforms")
    validate.add_argument("target", metavar="TARGET", help="module:attribute or path/to/file.py:attribute naming the backend(s)")
    _battery_options(validate, name="validate", examples=20, pair_examples=0)
    validate.set_defaults(run=_validate)
    replay = sub.add_parser("replay", parents=[debug], help="rerun a saved case on the backend you name")
    replay.add_argument("folder", help="a case folder saved by a run (<out>/<name>-crashes/...) or a failing test")
    whose = replay.add_mutually_exclusive_group()
    whose.add_argument("--backend", metavar="TARGET", default=None,
                       help="the backend to rerun the case on: module:attribute or path/to/file.py:attribute")
    whose.add_argument("--trust-target", action="store_true",
                       help="rerun it on the target the folder's case.json names (imports that code: only for a folder you trust)")
    replay.add_argument("--time-limit", type=float, default=120.0, metavar="SECONDS",
                        help="stop a backend that loads or runs longer than this, report it as timed out (default 120)")
    replay.add_argument("--records", action="append", default=[], metavar="FILE.py:ATTR",
                        help="judge the case with these records files, as the run did (repeatable; default: none, "
                             "or with --trust-target those the folder's case.json names)")
    replay.set_defaults(run=_replay)
    sub.add_parser("selfcheck", parents=[debug],
                   help="check the oracle against independent computations").set_defaults(run=_selfcheck)
    sub.add_parser("conventions", parents=[debug], help="list the convention records").set_defaults(run=_conventions)
    diff_command.add_parser(sub, [debug])
    merge_command.add_parser(sub, [debug])
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # before a run starts (a run in progress handles its own, keeping its report)
        print(f"bnconf {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bnconf diff ... | head`: the reader has gone; no error line, the exit status of SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit stays quiet
        return 128 + signal.SIGPIPE
    except Exception as e:  # a backend's own failure never gets here: the battery reports it as a cell error
        if args.debug:  # the traceback instead of the one line; the exit status stays the same
            traceback.print_exc()
        else:
            print(f"bnconf {args.command}: error: {_problem(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
