"""`bnconf merge A.json B.json ... --out DIR [--name merged]`: the command line of reports/merge.py (registered
in cli.py).

Writes DIR/NAME.json (the report of record, `bnconf-report/1` with "environments"), NAME.md and NAME.html, and
prints the merged report as `bnconf report` prints its own. Exit status: 0 when every input conforms, is complete
and no pair across environments differs unexpectedly or raised; 1 otherwise; 2 for bad input (merge.MergeError,
report_file.ReportFileError, output.OutputError: one line).
"""

import sys
from pathlib import Path

HELP = "combine reports made on different machines or environments into one report (exit 1: something fails)"
DESCRIPTION = ("Combine reports made on different machines or in different virtual environments into one report whose "
               "environment (framework versions, devices, machine, host) is a dimension of its own: every result of every "
               "input, each backend as '<backend> @ <environment>', a matrix backend x environment, and a cross-framework "
               "table that pairs backends that never shared a process (each environment's representatives against every "
               "other's, the same backend in two environments included), judged from the outputs each run saved on the "
               "canonical pair inputs. The reports must share seed, examples per cell, pair examples and spec. Label an "
               "environment with PATH=LABEL (default: the file's stem, or its folder's name where stems repeat).")


def add_parser(sub, parents) -> None:
    """The `merge` subcommand on `sub` (argparse subparsers)."""
    p = sub.add_parser("merge", parents=parents, help=HELP, description=DESCRIPTION)
    p.add_argument("reports", nargs="+", metavar="REPORT.json[=LABEL]",
                   help="a report JSON `bnconf report` wrote, one per environment, optionally labelled")
    p.add_argument("--out", default="reports", help="folder for the merged report files (default reports/)")
    p.add_argument("--name", default="merged", help="file name stem (default merged)")
    p.set_defaults(run=run)


def run(args) -> int:
    from . import figures, render
    from .merge import MergeError, merge, pair_problems, read_sources, saved_nothing
    from .output import ReportFolder

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (progress, kept off stdout)
    sources = read_sources(args.reports)
    folder = ReportFolder(args.out, args.name)
    target = (Path(args.out) / f"{args.name}.json").resolve()
    for s in sources:
        if s.path.resolve() == target:
            raise MergeError(f"the merged report would replace its input {s.path}; pick another --out or --name")
    folder.claim()  # an unwritable folder or a concurrent run: found before anything is computed
    try:
        for s in saved_nothing(sources):
            say(f"note: {s.path} ({s.label}) has no saved pair outputs (made with --pair-examples 0 or by a bnconf "
                "before merge): its backends are not paired across environments")
        merged = merge(sources, args.name, progress=say)
        report = merged.report
        folder.write(f"{args.name}.json", render.json_document(report).encode())
        pictures = {f"{args.name}-{suffix}.png": picture for suffix, picture in figures.render_all(report.results).items()}
        for file_name, (_, png) in pictures.items():
            folder.write(file_name, png)
        report.figures = pictures
        folder.write(f"{args.name}.md", render.markdown(report).encode())
        folder.write(f"{args.name}.html", render.html_page(report).encode())
    finally:
        folder.release()
    print(render.terminal(report))
    written = f"merged report written to {folder.out}/{args.name}.{{md,html,json}}"
    labels = ", ".join(s.label for s in sources)
    if merged.conforms:
        print(f"\nconforms in every environment ({labels}); {written}")
        return 0
    reasons = [f"partial input(s): {', '.join(merged.partial)}"] if merged.partial else []
    reasons += [f"{e['label']} does not conform" for e in report.environments if not e["conforms"]]
    reasons += pair_problems(merged.cross)
    print(f"\nNON-CONFORMANT or incomplete ({len(reasons)} reason(s); first: {reasons[0] if reasons else 'see findings'}); "
          f"{written}")
    return 1
