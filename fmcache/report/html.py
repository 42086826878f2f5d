"""Render a :class:`Report` as one self-contained HTML page.

Everything is inline (CSS, figures as PNG data URIs, CSV downloads as data URIs, a few
lines of JavaScript to sort tables), so the file opens offline and can be mailed as is.
"""

from __future__ import annotations

import base64
import html
import struct
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from fmcache.report.model import Column, Figure, Note, Report, Section, Sentence, Subhead, Table

CSS = """
:root{--ink:#1b1b1b;--muted:#555;--rule:#d0d0d0;--best:#e3eefa;--accent:#0072B2}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:#fff}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem;z-index:2}
header,main,footer{max-width:76rem;margin:0 auto;padding:0 1.25rem}
header{padding-top:1.5rem;border-bottom:1px solid var(--rule)}
h1{font-size:1.9rem;margin:.2rem 0}h2{font-size:1.5rem;margin:2.2rem 0 .6rem;padding-top:.6rem;border-top:2px solid var(--ink)}
h3{font-size:1.2rem;margin:1.8rem 0 .4rem}
.sub{color:var(--muted);margin:.2rem 0 .8rem}
nav ul{display:flex;flex-wrap:wrap;gap:.3rem 1.2rem;padding:0;margin:.5rem 0 1rem;list-style:none}
a{color:var(--accent)}a:focus,button:focus{outline:3px solid #E69F00;outline-offset:1px}
.scroll{overflow-x:auto;margin:.6rem 0 .2rem;border:1px solid var(--rule);border-radius:4px}
table{border-collapse:collapse;font-size:.875rem;width:100%;font-variant-numeric:tabular-nums}
caption{text-align:left;padding:.5rem .6rem;caption-side:top;color:var(--muted)}
caption strong{color:var(--ink)}
th,td{padding:.3rem .6rem;border-bottom:1px solid #e6e6e6;text-align:left;vertical-align:top}
th,td{white-space:nowrap}td.num{text-align:right}td.wrap{white-space:normal;min-width:12rem;max-width:28rem;overflow-wrap:anywhere}
th{background:#f3f3f3;position:sticky;top:0}
th button{all:unset;cursor:pointer;font-weight:600}
th button::after{content:" \\2195";color:#888;font-weight:400}
th[aria-sort=ascending] button::after{content:" \\2191";color:var(--ink)}
th[aria-sort=descending] button::after{content:" \\2193";color:var(--ink)}
td.best{background:var(--best);font-weight:700}
.ci{display:block;color:var(--muted);font-weight:400;font-size:.8em}
.sd{color:var(--muted);font-weight:400}
.dl{font-size:.85rem;margin:0 0 1rem}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:var(--muted);max-width:60rem}
.note{border-left:4px solid #E69F00;background:#fdf6e9;padding:.4rem .8rem;margin:.8rem 0;font-size:.95rem}
.summary li{margin:.35rem 0;max-width:62rem}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
footer{color:var(--muted);font-size:.85rem;border-top:1px solid var(--rule);margin-top:3rem;padding-bottom:2rem}
@media (max-width:900px){body{font-size:15px}th,td{padding:.25rem .4rem}}
"""

# sort a table by the clicked column: numbers numerically, text alphabetically, blanks last
JS = """
document.querySelectorAll("table.sortable th button").forEach(function (b) {
  b.addEventListener("click", function () {
    var th = b.parentNode, table = th.closest("table"), i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    table.querySelectorAll("th").forEach(function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r, s) {
      var x = r.cells[i].getAttribute("data-sort"), y = s.cells[i].getAttribute("data-sort");
      if (x === "" || y === "") return (x === "") - (y === "");
      var a = parseFloat(x), c = parseFloat(y);
      return (isNaN(a) || isNaN(c) ? x.localeCompare(y) : a - c) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

e = html.escape


def render(report: Report) -> str:
    """The whole page as a string."""
    nav = "".join(f'<li><a href="#{s.id}">{e(s.title)}</a></li>' for s in report.sections)
    body = "".join(_section(s) for s in report.sections)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{e(report.title)}</title><link rel="icon" href="data:,"><style>{CSS}</style></head><body>'
        '<a class="skip" href="#main">Skip to the results</a>'
        f'<header><h1>{e(report.title)}</h1><p class="sub">{e(report.subtitle)}</p>'
        f'<nav aria-label="Contents"><ul>{nav}</ul></nav></header>'
        f'<main id="main">{body}</main>'
        f'<footer><p>Written by fmcache on {stamp}. Colours follow the Okabe–Ito palette, which stays '
        'distinguishable under the common colour-vision deficiencies; every figure has a text alternative '
        'and every table a CSV download.</p></footer>'
        f"<script>{JS}</script></body></html>"
    )


def _section(s: Section) -> str:
    parts = [f'<section id="{s.id}" aria-labelledby="h-{s.id}"><h2 id="h-{s.id}">{e(s.title)}</h2>']
    if s.intro:
        parts.append(f"<p>{e(s.intro)}</p>")
    for b in s.blocks:
        if isinstance(b, Table):
            parts.append(table(b))
        elif isinstance(b, Figure):
            parts.append(figure(b))
        elif isinstance(b, Subhead):
            parts.append(f'<h3 id="{b.id}">{e(b.title)}</h3>')
        elif isinstance(b, Note):
            parts.append(f'<p class="note">{e(b.text)}</p>')
        elif isinstance(b, list):
            parts.append(_sentences(b))
    parts.append("</section>")
    return "".join(parts)


def _sentences(items: list[Sentence]) -> str:
    if not items:
        return '<p class="note">No classification results to summarise.</p>'
    lis = "".join(f'<li><span class="sentence" data-table="{s.table_id}">{e(s.text)}</span> '
                  f'<a href="#{s.table_id}">(table)</a></li>' for s in items)
    return f'<ul class="summary">{lis}</ul>'


def _num(v: float, col: Column) -> str:
    if col.decimals == 0:
        return str(int(v))
    return f"{v:+.{col.decimals}f}" if col.signed else f"{v:.{col.decimals}f}"


def _best(frame: pd.DataFrame, col: Column) -> float | None:
    if col.better is None or col.key not in frame:
        return None
    v = pd.to_numeric(frame[col.key], errors="coerce").dropna()
    # a column where every row ties has no best row
    if v.empty or len(frame) < 2 or v.nunique() < 2:
        return None
    return float(v.max() if col.better == "higher" else v.min())


def _cell(row: pd.Series, col: Column, best: float | None) -> str:
    v = row.get(col.key)
    if isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
        v = float(v)
        if not np.isfinite(v):
            return '<td class="num" data-sort="">n/a</td>'
        is_best = best is not None and v == best
        text = _num(v, col)
        sd = row.get(col.sd, np.nan) if col.sd else np.nan
        if isinstance(sd, (int, float, np.number)) and np.isfinite(sd):
            text += f' <span class="sd">± {sd:.{col.decimals}f}</span>'
        text += ' ★<span class="sr"> (best)</span>' if is_best else ""
        if col.ci:
            lo, hi = float(row[col.ci[0]]), float(row[col.ci[1]])
            if np.isfinite(lo) and np.isfinite(hi):
                text += f' <span class="ci">[{_num(lo, col)}, {_num(hi, col)}]</span>'
        return f'<td class="num{" best" if is_best else ""}" data-sort="{v!r}">{text}</td>'
    text = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
    cls = ' class="wrap"' if col.wrap else ""
    return f'<td{cls} data-sort="{e(text)}">{e(text)}</td>'


def table(t: Table) -> str:
    """A sortable table with its caption and a CSV download of its frame."""
    cols = [c for c in t.columns if c.key in t.frame.columns]
    head = "".join(f'<th scope="col" aria-sort="none"><button type="button">{e(c.title)}</button></th>' for c in cols)
    bests = [_best(t.frame, c) for c in cols]
    rows = "".join("<tr>" + "".join(_cell(r, c, b) for c, b in zip(cols, bests)) + "</tr>"
                   for _, r in t.frame.iterrows())
    csv = base64.b64encode(t.frame.to_csv(index=False).encode()).decode()
    cap = f"<strong>{e(t.title)}.</strong> {e(t.caption)}" if t.caption else f"<strong>{e(t.title)}</strong>"
    return (f'<div class="scroll" role="region" tabindex="0" aria-labelledby="cap-{t.id}">'
            f'<table class="sortable" id="{t.id}"><caption id="cap-{t.id}">{cap}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"
            f'<p class="dl"><a download="{e(t.csv_name)}" href="data:text/csv;charset=utf-8;base64,{csv}">'
            f"Download this table as CSV</a> ({len(t.frame)} rows)</p>")


def figure(f: Figure) -> str:
    """A PNG figure with its text alternative and caption."""
    w, h = struct.unpack(">II", f.png[16:24])  # the PNG header's width and height
    data = base64.b64encode(f.png).decode()
    cap = f"<strong>{e(f.title)}.</strong> {e(f.caption)}"
    return (f'<figure id="{f.id}"><img src="data:image/png;base64,{data}" alt="{e(f.alt)}" width="{w}" '
            f'height="{h}" loading="eager"><figcaption>{cap}</figcaption></figure>')
