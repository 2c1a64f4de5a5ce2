"""One self-contained HTML page: figures embedded as base64 PNG, tables sortable (click a header) and filterable
(type in the box above) by a few lines of inline JavaScript. No server, no network, no external file.

The script also leaves three marks on ``<body>`` that tests (and curious readers) can check: ``data-sort-ready``
(the number of sortable tables wired), ``data-figures-loaded`` (``loaded/total`` images with a non-zero natural
width, set on the load event) and ``data-js-errors`` (errors caught by ``window.onerror``).
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["Section", "render_page", "table_html", "format_value"]

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2430;
background:#fafbfc;line-height:1.45}
header{background:#243b53;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:1.6em}
header p{margin:0;opacity:.85}
nav{background:#eef2f7;padding:8px 32px;border-bottom:1px solid #d9e2ec;position:sticky;top:0;z-index:2}
nav a{margin-right:16px;color:#243b53;text-decoration:none;font-weight:600}
main{padding:8px 32px 40px;max-width:1500px}
section{margin-top:28px}h2{border-bottom:2px solid #d9e2ec;padding-bottom:4px}h3{margin-bottom:6px}
.glance{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.glance div{background:#fff;border:1px solid #d9e2ec;border-radius:6px;padding:8px 14px;min-width:120px}
.glance b{display:block;font-size:1.35em}
.warn{background:#fff4e5;border-left:4px solid #e8a33d;padding:8px 12px;margin:6px 0}
.note{color:#52606d;font-size:.92em}
pre{background:#102a43;color:#f0f4f8;padding:10px 14px;border-radius:6px;overflow-x:auto;white-space:pre-wrap}
figure{margin:16px 0;background:#fff;border:1px solid #d9e2ec;border-radius:6px;padding:10px;display:inline-block;
max-width:100%}figure img{max-width:100%;height:auto}figcaption{font-size:.9em;color:#52606d;margin-top:4px}
.tablebox{overflow-x:auto;margin:8px 0 18px}
table{border-collapse:collapse;font-size:.86em;background:#fff}
th,td{border:1px solid #d9e2ec;padding:3px 7px;text-align:right;white-space:nowrap}
td.t,th.t{text-align:left}
th{background:#eef2f7;cursor:pointer;user-select:none;position:sticky;top:0}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
tbody tr:nth-child(even){background:#f7f9fb}
input.table-filter{margin:4px 0;padding:3px 6px;width:260px}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
"""

_JS = """
(function () {
  var body = document.body;
  window.addEventListener('error', function () {
    body.setAttribute('data-js-errors', String(Number(body.getAttribute('data-js-errors') || 0) + 1));
  });
  function valueOf(cell) {
    var v = cell.getAttribute('data-v');
    return v === null ? cell.textContent.trim() : v;
  }
  function sortBy(table, column, header) {
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    var ascending = header.getAttribute('aria-sort') !== 'ascending';
    var numeric = rows.every(function (r) { var v = valueOf(r.cells[column]); return v === '' || !isNaN(Number(v)); });
    rows.sort(function (a, b) {
      var x = valueOf(a.cells[column]), y = valueOf(b.cells[column]);
      if (x === '' || y === '') { return x === y ? 0 : (x === '' ? 1 : -1); }
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
    Array.prototype.forEach.call(header.parentNode.cells, function (h) { h.removeAttribute('aria-sort'); });
    header.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, i) {
      header.title = 'click to sort';
      header.addEventListener('click', function () { sortBy(table, i, header); });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll('input.table-filter'), function (input) {
    var table = document.getElementById(input.getAttribute('data-table'));
    input.addEventListener('input', function () {
      var query = input.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        r.style.display = r.textContent.toLowerCase().indexOf(query) >= 0 ? '' : 'none';
      });
    });
  });
  body.setAttribute('data-sort-ready', String(tables.length));
  function checkFigures() {
    var loaded = 0;
    for (var i = 0; i < document.images.length; i++) {
      if (document.images[i].complete && document.images[i].naturalWidth > 0) { loaded++; }
    }
    body.setAttribute('data-figures-loaded', loaded + '/' + document.images.length);
  }
  if (document.readyState === 'complete') { checkFigures(); } else { window.addEventListener('load', checkFigures); }
})();
"""


@dataclass
class Section:
    """A titled part of the page; ``blocks`` are rendered in order.

    Block forms: ``("p", text)``, ``("note", text)``, ``("warn", text)``, ``("pre", text)``, ``("list", [text])``,
    ``("h3", text)``, ``("glance", [(label, value)])``, ``("figure", png_bytes, caption)``,
    ``("table", DataFrame, table_id, caption, collapsed)``.
    """

    id: str
    title: str
    blocks: list = field(default_factory=list)


def format_value(value) -> tuple[str, str | None]:
    """Text shown for a cell and the raw value to sort by (None: sort by the text)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return "", ""
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), None
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}", str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isinf(value):
            return ("inf" if value > 0 else "-inf"), repr(value).replace("inf", "Infinity")
        magnitude = abs(value)
        if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e6):
            text = f"{value:.3e}"
        elif magnitude >= 1000:
            text = f"{value:,.1f}"
        else:
            text = f"{value:.4g}"
        return text, repr(value)
    return str(value), None


def table_html(table: pd.DataFrame, table_id: str, caption: str = "") -> str:
    """A sortable, filterable HTML table (numbers right-aligned and sorted numerically)."""
    columns = [str(c) for c in table.columns]
    text_columns = [not (pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c]))
                    for c in table.columns]
    parts = [f'<input class="table-filter" type="search" placeholder="filter rows" data-table="{table_id}">',
             f'<div class="tablebox"><table class="sortable" id="{table_id}">']
    if caption:
        parts.append(f"<caption>{html.escape(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(
        f'<th class="t">{html.escape(c)}</th>' if t else f"<th>{html.escape(c)}</th>"
        for c, t in zip(columns, text_columns)) + "</tr></thead><tbody>")
    rows = []
    for record in table.itertuples(index=False, name=None):
        cells = []
        for value, is_text in zip(record, text_columns):
            text, raw = format_value(value)
            attribute = f' data-v="{html.escape(raw)}"' if raw is not None else ""
            css = ' class="t"' if is_text else ""
            cells.append(f"<td{css}{attribute}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("".join(rows))
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _block_html(block) -> str:
    kind = block[0]
    if kind == "p":
        return f"<p>{html.escape(block[1])}</p>"
    if kind == "note":
        return f'<p class="note">{html.escape(block[1])}</p>'
    if kind == "warn":
        return f'<div class="warn">{html.escape(block[1])}</div>'
    if kind == "pre":
        return f"<pre><code>{html.escape(block[1])}</code></pre>"
    if kind == "h3":
        return f"<h3>{html.escape(block[1])}</h3>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block[1]) + "</ul>"
    if kind == "glance":
        return '<div class="glance">' + "".join(
            f"<div><b>{html.escape(str(value))}</b>{html.escape(label)}</div>" for label, value in block[1]) + "</div>"
    if kind == "figure":
        _, png, caption = block
        data = base64.b64encode(png).decode("ascii")
        return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if kind == "table":
        _, table, table_id, caption, collapsed = block
        inner = table_html(table, table_id)
        if collapsed:
            return (f"<details><summary>{html.escape(caption)} ({len(table):,} rows)</summary>{inner}</details>")
        return f"<h3>{html.escape(caption)}</h3>{inner}" if caption else inner
    raise ValueError(f"unknown block {kind!r}")


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as a string."""
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>'
                   + "".join(_block_html(b) for b in s.blocks) + "</section>" for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f'<body data-sort-ready="0" data-figures-loaded="0" data-js-errors="0">'
            f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main><script>{_JS}</script></body></html>\n")
