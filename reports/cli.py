"""The `bnconf` command line.

    bnconf selfcheck      check the float64 oracle against independent computations (exit 0 / 1)
    bnconf conventions    list every framework convention record

Exit status: 0 success, 1 a check failed, 2 bad usage.
"""

import argparse
import sys

from .terminal import table


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bnconf", description="Batch Normalization conformance checker")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("selfcheck", help="check the oracle against independent computations").set_defaults(run=_selfcheck)
    sub.add_parser("conventions", help="list the convention records").set_defaults(run=_conventions)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
