"""HTML building blocks of the report: its style sheet, escaping, tables, "mean ± SD"."""
from __future__ import annotations

import html

import numpy as np


STYLE = """<style>
body{color:#1d1d1d;font-size:16px}
a{color:#1a56a8}
#results-table{color:#333}
body{display:flex;flex-direction:column;max-width:100%;overflow-x:hidden;min-width:0}
body>*{order:2;max-width:100%;min-width:0}
#title,body>p:first-of-type{order:0}
div.summary{order:1;display:flex;flex-direction:column}
div.summary__data{display:contents}
div.summary .additional-summary.prefix{order:0}
div.summary .additional-summary.postfix{order:1}
div.summary .additional-summary.summary{order:2}
div.summary__data>h2,div.summary__spacer{display:none}
p.run-count,p.filter,div.summary__reload,div.controls{order:3}
#environment-header,#environment,#results-table,p.filter,div.controls{display:none}
body:has(#sn-show-tests:checked) #results-table{display:table}
body:has(#sn-show-tests:checked) #environment-header,body:has(#sn-show-tests:checked) p.filter{display:block}
body:has(#sn-show-tests:checked) #environment{display:table}
body:has(#sn-show-tests:checked) div.controls{display:flex}
div.scratchnet{max-width:1100px;font-size:16px;line-height:1.5}
div.scratchnet a{color:#1a56a8}
div.scratchnet h2{margin-top:32px;border-bottom:1px solid #ccc}
div.scratchnet p,div.scratchnet li{max-width:95ch}
div.scroll{overflow-x:auto;max-width:100%}
table.scratchnet{border-collapse:collapse;margin:6px 0 12px;font-size:14px;color:#1d1d1d}
table.scratchnet td,table.scratchnet th{border:1px solid #bbb;padding:3px 7px;text-align:left;vertical-align:top}
table.scratchnet td.num,table.scratchnet th.num{text-align:right;font-variant-numeric:tabular-nums}
table.scratchnet th{background:#eef1f5}
table.scratchnet tr.selected td{background:#fff6d6}
p.conclusion{background:#f2f6fa;padding:8px 12px;border-left:4px solid #3a7}
p.warn{background:#fff3f0;padding:6px 10px;border-left:4px solid #c63}
div.answer{background:#f7faf7;border:1px solid #9c9;padding:8px 14px;margin-bottom:10px}
div.tests-toggle{margin:24px 0 8px;padding:8px 12px;border:1px solid #ccc;background:#fafafa;font-size:16px}
code{background:#f1f1f1;padding:0 3px;overflow-wrap:anywhere}
img{height:auto}
@media (max-width:700px){div.scratchnet{font-size:15px} table.scratchnet{font-size:13px}}
</style>"""


def esc(x) -> str:
    return html.escape(str(x))


def _is_number(cell) -> bool:
    """A cell that reads as a number (right-aligned); text stays left-aligned."""
    import re
    text = re.sub(r"<[^>]+>", "", str(cell)).strip()
    return bool(text) and re.fullmatch(r"[★\s]*[-+−]?[\d.,]+(e[-+]?\d+)?\s*(±\s*[\d.]+)?\s*(%|×|s|ms|min)?"
                                       r"(\s*\(n=\d+\))?", text) is not None


def table(headers, rows, row_classes=None) -> str:
    """A table in its own horizontal scroll box; cells that read as numbers are right-aligned."""
    rows = [list(r) for r in rows]
    numeric = [bool(rows) and all(_is_number(r[j]) or str(r[j]) in ("", "n/a", "–") for r in rows if j < len(r))
               and any(_is_number(r[j]) for r in rows if j < len(r)) for j in range(len(headers))]
    head = "".join(f'<th{" class=num" if numeric[j] else ""}>{esc(h)}</th>' for j, h in enumerate(headers))
    body = "".join(
        f'<tr class="{(row_classes or {}).get(i, "")}">'
        + "".join(f'<td{" class=num" if j < len(numeric) and numeric[j] else ""}>{c}</td>' for j, c in enumerate(row))
        + "</tr>" for i, row in enumerate(rows))
    return (f'<div class="scroll"><table class="scratchnet"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def pm(mean, sd, digits=3) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")
