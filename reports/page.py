"""The HTML report page: summary first, then the findings, the figures and the full tables, one self-contained
file (inline CSS and a few lines of vanilla JS, figures as data URIs, nothing fetched).

Layout at 1400 px: fixed-layout tables at 100% width whose cells wrap (no sideways scroll), images at most
the page's width. Every table sorts by a click on a header (numbers as numbers, "inf"/"nan" largest). Each
table whose Section has `filter_columns` gets a filter bar (`filters`): a text box, a backend select and verdict
checkboxes; the URL hash holds each bar's filter under its prefix (the conformance table's has none:
`#verdict=NON-CONFORMANT,ERROR&backend=<name>&q=<text>`; the distributed table's `replicas-`:
`#replicas-verdict=NON-CONFORMANT`), so that a link opens the page filtered, and it is applied on load and
whenever the hash changes; a click on a backend's summary line shows its rows in the first table that has it.
"""

import base64
import html
import re

VERDICT_CLASSES = ("conforms", "known discrepancy", "ill-conditioned", "NON-CONFORMANT", "ERROR", "unsupported")
_ROW_CLASS = {"NON-CONFORMANT": "bad", "ERROR": "bad", "known discrepancy": "known", "ill-conditioned": "ill"}
_MAX_WEIGHT, _MIN_WEIGHT = 80, 3  # a column's share of the width, in characters of its longest cell
_WORD = re.compile(r"[^\s-]+-?")  # where a browser may wrap a line: at a space, after a hyphen
_WORD_LIMIT = 12  # a longer word (a path, a shape) may be broken anywhere
PAGE_CHARS = 190  # characters of a table cell's font across a 1400 px page

STYLE = """*{box-sizing:border-box}
body{font:13px/1.35 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 16px 32px}
h1{font-size:19px;margin:8px 0 2px}h2{font-size:15px;margin:16px 0 4px}p{margin:4px 0}
table{border-collapse:collapse;table-layout:fixed;width:100%;font-size:12px;margin:4px 0}
td,th{border:1px solid #ccc;padding:1px 4px;line-height:1.25;vertical-align:top;text-align:left;overflow-wrap:anywhere}
th{background:#eee;cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
#backends td{padding:0 4px;line-height:1.2}#backends tbody tr{cursor:pointer}
tr.bad td{background:#fdd}tr.known td{background:#fff4cc}tr.ill td{background:#eef}
img{max-width:100%;height:auto}.verdict{font-size:15px}.note{color:#444}
.filters{position:sticky;top:0;background:#fff;padding:4px 0;z-index:1}.filters label{margin-right:10px}
.filters input[type=search]{width:24em}"""

SCRIPT = """(function () {
  "use strict";
  function num(t) {
    t = t.trim();
    if (t === "inf" || t === "nan") return Infinity;
    if (t === "-inf") return -Infinity;
    var v = parseFloat(t);
    return isNaN(v) ? null : v;
  }
  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], i = th.cellIndex;
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i].textContent, y = b.cells[i].textContent, p = num(x), q = num(y);
      if (p !== null && q !== null) return p === q ? 0 : dir * (p < q ? -1 : 1);
      if (p !== null || q !== null) return p !== null ? -1 : 1;
      return dir * x.localeCompare(y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th); });
  });
  var KEYS = ["verdict", "backend", "q"];
  var bars = Array.prototype.map.call(document.querySelectorAll(".filters"), function (el) {
    return {table: document.getElementById(el.dataset.table), prefix: el.dataset.prefix || "",
            text: el.querySelector("input[type=search]"), backend: el.querySelector("select"),
            boxes: el.querySelectorAll("input[type=checkbox]"), shown: el.querySelector(".filter-shown")};
  }).filter(function (bar) { return bar.table; });
  if (!bars.length) return;
  function apply(bar) {
    var want = {}, q = bar.text.value.toLowerCase(), b = bar.backend.value, n = 0, rows = bar.table.tBodies[0].rows;
    bar.boxes.forEach(function (c) { want[c.value] = c.checked; });
    Array.prototype.forEach.call(rows, function (r) {
      var ok = want[r.dataset.verdict] !== false && (!b || r.dataset.backend === b) &&
               (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !ok;
      n += ok ? 1 : 0;
    });
    bar.shown.textContent = n + " of " + rows.length + " rows shown";
  }
  function fromHash() {
    var p = new URLSearchParams(location.hash.slice(1));
    bars.forEach(function (bar) {
      var verdicts = p.get(bar.prefix + "verdict");
      bar.boxes.forEach(function (c) { c.checked = !verdicts || verdicts.split(",").indexOf(c.value) >= 0; });
      bar.backend.value = p.get(bar.prefix + "backend") || "";
      bar.text.value = p.get(bar.prefix + "q") || "";
      apply(bar);
    });
  }
  function toHash(bar) {
    var p = new URLSearchParams(location.hash.slice(1)), on = [];
    KEYS.forEach(function (k) { p.delete(bar.prefix + k); });
    bar.boxes.forEach(function (c) { if (c.checked) on.push(c.value); });
    if (on.length < bar.boxes.length) p.set(bar.prefix + "verdict", on.join(","));
    if (bar.backend.value) p.set(bar.prefix + "backend", bar.backend.value);
    if (bar.text.value) p.set(bar.prefix + "q", bar.text.value);
    try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { /* a page opened from a file may refuse */ }
    apply(bar);
  }
  bars.forEach(function (bar) {
    [bar.text, bar.backend].concat(Array.prototype.slice.call(bar.boxes)).forEach(function (el) {
      el.addEventListener("input", function () { toHash(bar); });
      el.addEventListener("change", function () { toHash(bar); });
    });
  });
  window.addEventListener("hashchange", function () {
    fromHash();
    var p = new URLSearchParams(location.hash.slice(1));
    var named = bars.filter(function (bar) { return KEYS.some(function (k) { return p.has(bar.prefix + k); }); });
    (named[0] || bars[0]).table.scrollIntoView();
  });
  function holding(name) {
    return bars.filter(function (bar) {
      return Array.prototype.some.call(bar.backend.options, function (o) { return o.value === name; });
    })[0] || bars[0];
  }
  document.querySelectorAll("#backends tbody tr").forEach(function (r) {
    var bar = holding(r.dataset.backend);
    r.title = "show this backend's rows in the full table";
    r.addEventListener("click", function () { location.hash = bar.prefix + "backend=" + encodeURIComponent(r.dataset.backend); });
  });
  fromHash();
})();"""


def esc(value) -> str:
    return html.escape(str(value))


def verdict_class(text: str) -> str:
    """The filter class of a verdict cell: one of VERDICT_CLASSES ("ERROR" for a cell that raised, crashed, timed
    out, ran out of memory or did not run), or "" for anything else."""
    text = str(text)
    for word in VERDICT_CLASSES:
        if text.startswith(word):
            return word
    return "ERROR" if text.startswith(("CRASHED", "TIMED OUT", "OUT OF MEMORY", "NOT RUN")) else ""


def _chars(word: str) -> float:
    """A word's width in average characters (capitals are wider)."""
    return len(word) + 0.35 * sum(c.isupper() for c in word)


def _column_needs(header, rows) -> tuple[list[float], list[float]]:
    """Per column, in characters: (what it needs: its longest word up to _WORD_LIMIT, its header's longest word
    in bold; what it wants: its longest cell, at most _MAX_WEIGHT)."""
    needs, wants = [], []
    for i, title in enumerate(header):
        cells = [str(row[i]) for row in rows if i < len(row)]
        longest = max(map(len, cells), default=0)
        word = min(max((_chars(w) for c in cells for w in _WORD.findall(c)), default=0), _WORD_LIMIT) + 2  # padding
        title_word = 1.15 * max(map(_chars, _WORD.findall(str(title))), default=0) + 2  # in bold
        needs.append(max(word, title_word, _MIN_WEIGHT))
        wants.append(min(max(longest, needs[-1]), max(_MAX_WEIGHT, needs[-1])))
    return needs, wants


def _weights(header, rows) -> list[float]:
    """Each column's share of the width: what it wants when the page holds that, else what it needs plus a share
    of the rest in proportion to what it wants beyond that."""
    needs, wants = _column_needs(header, rows)
    if sum(wants) <= PAGE_CHARS or sum(needs) >= PAGE_CHARS:
        return wants if sum(wants) <= PAGE_CHARS else needs
    spare = (PAGE_CHARS - sum(needs)) / (sum(wants) - sum(needs))
    return [n + (w - n) * spare for n, w in zip(needs, wants)]


def colgroup(header, rows) -> str:
    weights = _weights(header, rows)
    total = sum(weights)
    return "<colgroup>" + "".join(f'<col style="width:{100 * w / total:.2f}%">' for w in weights) + "</colgroup>"


def _row(values, attributes: str = "") -> str:
    return f"<tr{attributes}>" + "".join(f"<td>{esc(v)}</td>" for v in values) + "</tr>"


def table(header, rows, verdict_column: int | None = None, backend_column: int | None = None, element_id: str = "",
          filtered: bool = False, row_class=None) -> str:
    """A sortable table; rows carry data-verdict / data-backend where those columns are given."""
    body = []
    for row in rows:
        verdict = verdict_class(row[verdict_column]) if verdict_column is not None else ""
        css = _ROW_CLASS.get(verdict, "") or (row_class(row) if row_class else "")
        attributes = f' class="{css}"' if css else ""
        attributes += f' data-verdict="{esc(verdict)}"' if verdict_column is not None else ""
        attributes += f' data-backend="{esc(row[backend_column])}"' if backend_column is not None else ""
        body.append(_row(row, attributes))
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    ident = f' id="{esc(element_id)}"' if element_id else ""
    return (f'<table class="sortable"{ident}{" data-filtered" if filtered else ""}>{colgroup(header, rows)}'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table>")


def filters(backends, verdicts, table_id: str = "conformance", prefix: str = "") -> str:
    """The filter bar of the table `table_id`; `prefix` names its keys in the URL hash and its elements' ids
    ("": the full conformance table's `#verdict=...`, ids filter-text, filter-backend)."""
    options = "".join(f'<option value="{esc(b)}">{esc(b)}</option>' for b in backends)
    boxes = "".join(f'<label><input type="checkbox" value="{esc(v)}" checked> {esc(v)}</label>' for v in verdicts)
    p = esc(prefix)
    return (f'<div class="filters" id="{p}filters" data-table="{esc(table_id)}" data-prefix="{p}">'
            f'<input type="search" id="{p}filter-text" placeholder="filter rows by any text" '
            f'aria-label="filter rows by any text"> <select id="{p}filter-backend" aria-label="backend">'
            f'<option value="">every backend</option>{options}</select> {boxes} '
            f'<span class="filter-shown" id="{p}filter-shown"></span></div>')


def figures(pictures: dict) -> str:
    """The figures embedded as data URIs, so that the HTML file stands alone."""
    return "\n".join(f'<h2>{esc(title)}</h2><img alt="{esc(title)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}">' for title, png in pictures.values())


def document(title: str, head: str, body: str) -> str:
    """The page around `body`; `head` is what opens it (the verdict and the summary)."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{STYLE}</style></head>
<body>
{head}
{body}
<script>{SCRIPT}</script>
</body></html>
"""
