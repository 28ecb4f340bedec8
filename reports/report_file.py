"""Reading a report JSON that another run (another machine, another bnconf) wrote, for `bnconf diff` (and merge).

    doc = read_report(Path("before.json"))   # the JSON document as a dict

A file that is missing, not JSON, not a bnconf report, or a report in a format this bnconf does not read is
bad input: `ReportFileError`, one line naming the file and the fix. The document is returned as a dict, not a
`render.Report`: a comparison needs only identities and verdicts, and reading the dict lets every key an
older report lacks default where it is used.
"""

import json
import re
from pathlib import Path

from .render import FORMAT

FAMILY = FORMAT.rsplit("/", 1)[0]  # "bnconf-report"


class ReportFileError(ValueError):
    """A report file that cannot be compared, with what to give instead."""


def _format_of(doc, name: str) -> str:
    """The document's format, checked: ReportFileError unless it is FORMAT."""
    found = doc.get("format") if isinstance(doc, dict) else None
    if found == FORMAT:
        return found
    if isinstance(found, str) and re.fullmatch(rf"{re.escape(FAMILY)}/\S+", found):
        raise ReportFileError(f"{name} is a {found} report; this bnconf reads {FORMAT}: compare it with the bnconf "
                              f"version that wrote it, or rerun `bnconf report` with this one to get a {FORMAT} report")
    raise ReportFileError(f"{name} is not a bnconf report (no \"format\": \"{FORMAT}\" field); give the <name>.json "
                          "file that `bnconf report` wrote")


def read_report(path) -> dict:
    """The report JSON at `path` as a dict; ReportFileError (one line) when it cannot be compared."""
    path = Path(path)
    name = str(path)
    if path.is_dir():
        raise ReportFileError(f"{name} is a folder; give the report's JSON file in it, e.g. {path / 'report.json'}")
    if not path.exists():
        raise ReportFileError(f"no file {name}; check the path (a report is the <out>/<name>.json `bnconf report` wrote)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ReportFileError(f"{name} is not a text file; give the <name>.json file `bnconf report` wrote") from None
    except json.JSONDecodeError as e:
        raise ReportFileError(f"{name} is not JSON ({e.msg} at line {e.lineno}); give the <name>.json file "
                              "`bnconf report` wrote") from None
    _format_of(doc, name)
    return doc
