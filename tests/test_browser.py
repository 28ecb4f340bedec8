"""The HTML report in a real browser (issue 16, item 6): headless Chromium at 1400x900 opens a report of four
backends (conforming, known and ill-conditioned rows, NON-CONFORMANT, a cell that raised), and the dumped DOM
shows that the summary is visible without scrolling, nothing scrolls sideways, a URL hash filters the full table
on load, a click on a backend's summary line shows its rows and a click on a header sorts the table numerically.

A probe script is appended to a copy of the page (the report itself carries nothing for tests): it measures
the layout after the page's own script ran and writes the facts as JSON into <body data-probe>. Chromium runs
with a virtual-time budget (page time, not wall time) and a generous wall-clock limit, so a slow machine changes
nothing. Without Chromium the tests skip (CI installs it: .ci/run; developers: `apt-get install chromium`).
"""

import html
import importlib.util
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bnconf.reports import figures, render

_SPEC = importlib.util.spec_from_file_location("synthetic_reports", Path(__file__).parent / "fixtures" / "reports.py")
reports = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reports)

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed (apt-get install chromium; "
                                                        ".ci/run installs it in CI)")
WIDTH, HEIGHT = 1400, 900
WALL_SECONDS = 180  # a browser that has not answered by then is broken, not slow

PROBE = """<script>
(function () {
  var d = document.documentElement, summary = document.getElementById("summary").getBoundingClientRect();
  var facts = {summaryTop: summary.top + window.scrollY, summaryBottom: summary.bottom + window.scrollY,
               innerHeight: window.innerHeight, scrollWidth: d.scrollWidth, clientWidth: d.clientWidth,
               widest: Math.max.apply(null, Array.prototype.map.call(document.querySelectorAll("table, img"),
                                      function (e) { return e.getBoundingClientRect().right; }))};
  var table = document.getElementById("conformance"), sort = SORT_COLUMN;
  if (sort >= 0) {
    table.tHead.rows[0].cells[sort].click();
    facts.sorted = Array.prototype.map.call(table.tBodies[0].rows, function (r) { return r.cells[sort].textContent; });
  }
  ACTION
  document.body.setAttribute("data-probe", JSON.stringify(facts));
})();
</script>"""


class _Rows(HTMLParser):
    """The conformance table's rows in the dumped DOM: (data-verdict, data-backend, hidden)."""

    def __init__(self):
        super().__init__()
        self.rows, self._inside = [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._inside = a.get("id") == "conformance"
        elif tag == "tr" and self._inside and "data-verdict" in a:
            self.rows.append((a["data-verdict"], a["data-backend"], "hidden" in a))

    def handle_endtag(self, tag):
        if tag == "table":
            self._inside = False


def _page(tmp_path) -> Path:
    report = reports.small_report()
    report.figures = {f"r-{k}.png": v for k, v in figures.render_all(report.results).items()}
    page = tmp_path / "r.html"
    page.write_text(render.html_page(report))
    return page


def _chromium(tmp_path, *args) -> str:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
           "--virtual-time-budget=20000", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=WALL_SECONDS)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _load(tmp_path, page: Path, fragment: str = "", sort_column: int = -1, action: str = "") -> tuple[dict, list]:
    """Open a copy of `page` with the probe at `#fragment` (after sorting by `sort_column` and running the JS
    `action`): (the probe's facts, the conformance table's rows as the DOM holds them once the page settled)."""
    probed = page.with_name("probed.html")
    probe = PROBE.replace("SORT_COLUMN", str(sort_column)).replace("ACTION", action)
    probed.write_text(page.read_text().replace("</body>", probe + "</body>"))
    dom = _chromium(tmp_path, "--dump-dom", probed.as_uri() + fragment)
    found = re.search(r'<body[^>]*data-probe="([^"]*)"', dom)
    assert found, dom[:2000]
    parser = _Rows()
    parser.feed(dom)
    return json.loads(html.unescape(found.group(1))), parser.rows


def test_the_summary_is_visible_without_scrolling_and_nothing_scrolls_sideways(tmp_path):
    facts, rows = _load(tmp_path, _page(tmp_path))
    assert 0 <= facts["summaryTop"] < facts["summaryBottom"] <= facts["innerHeight"], facts
    assert facts["scrollWidth"] <= facts["clientWidth"] and facts["widest"] <= facts["clientWidth"], facts
    assert rows and not any(hidden for _, _, hidden in rows)  # no filter in the URL: every row shown


def test_a_url_hash_filters_the_full_table_on_load(tmp_path):
    page = _page(tmp_path)
    _, rows = _load(tmp_path, page, "#verdict=NON-CONFORMANT,ERROR")
    shown = [(verdict, backend) for verdict, backend, hidden in rows if not hidden]
    assert shown == [("NON-CONFORMANT", "wrong:eps-outside"), ("ERROR", "wrong:raises-in-backward")], shown
    _, rows = _load(tmp_path, page, "#backend=recorded.backend&q=running_var")
    shown = [(verdict, backend) for verdict, backend, hidden in rows if not hidden]
    assert shown == [("ill-conditioned", "recorded.backend")], shown


def test_a_click_on_a_backend_in_the_summary_shows_its_rows(tmp_path):
    click = 'document.querySelector("#backends tr[data-backend=\'recorded.backend\']").click();'
    _, rows = _load(tmp_path, _page(tmp_path), action=click)
    assert {backend for _, backend, hidden in rows if not hidden} == {"recorded.backend"}
    assert sum(not hidden for _, _, hidden in rows) == 7  # its three cells' quantities


def test_a_click_on_a_header_sorts_the_table_by_its_numbers(tmp_path):
    column = render.CELL_HEADER.index("error / bound")
    facts, _ = _load(tmp_path, _page(tmp_path), sort_column=column)
    numbers = [float(v) for v in facts["sorted"] if v]
    assert numbers == sorted(numbers) and numbers[-1] == 1.9e6, facts["sorted"]
    assert all(not v for v in facts["sorted"][len(numbers):])  # blanks last


def test_a_screenshot_of_the_page_is_taken(tmp_path):
    shot = tmp_path / "report.png"  # kept in tmp_path, never in the repository
    _chromium(tmp_path, f"--screenshot={shot}", _page(tmp_path).as_uri())
    assert shot.read_bytes().startswith(b"\x89PNG")
