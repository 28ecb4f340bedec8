"""`bnconf diff OLD.json NEW.json`: the command line of reports/diff.py (registered in cli.py).

Exit status: 1 when NEW has a regression (anything newly failing), 0 otherwise, 2 for a file that cannot be
compared (missing, not a report, a report format this bnconf does not read: report_file.ReportFileError).
"""

HELP = "list what changed between two report JSONs; exit 1 when NEW has a regression"
DESCRIPTION = ("List what changed between two reports, matched by identity (backend, device, dtype, mode, quantity; "
               "distributed rows by backend, world size, split, dtype, quantity): rows and cells newly failing or "
               "fixed, edge cases, cross-framework pairs, records gone stale or no longer needed, framework versions. "
               "For a framework upgrade's CI: `bnconf report` before and after, then `bnconf diff before.json "
               "after.json` exits 1 on a regression. Reports with different seeds or examples per cell are compared "
               "all the same, with a note.")


def add_parser(sub, parents) -> None:
    """The `diff` subcommand on `sub` (argparse subparsers)."""
    p = sub.add_parser("diff", parents=parents, help=HELP, description=DESCRIPTION)
    p.add_argument("old", metavar="OLD.json", help="the report before (e.g. the current framework version)")
    p.add_argument("new", metavar="NEW.json", help="the report after (e.g. the upgraded framework)")
    p.add_argument("--json", action="store_true", help="print every change as JSON (bnconf-diff/1) instead of text")
    p.set_defaults(run=run)


def run(args) -> int:
    from .diff import diff
    from .diff_text import json_text, text
    from .report_file import read_report

    old, new = read_report(args.old), read_report(args.new)
    d = diff(old, new, str(args.old), str(args.new))
    print(json_text(d) if args.json else text(d))
    return 1 if d.regressions else 0
