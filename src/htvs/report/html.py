"""Render the campaign report as one self-contained HTML page.

Inline CSS, a few lines of inline JavaScript (click a header of a ``sortable`` table to sort it),
figures as inline base64 PNG: the file opens from disk with no network. Every value is escaped.
"""

from __future__ import annotations

import html
from typing import Any

from htvs.report.candidates import CandidateRow
from htvs.report.columns import DATA_DICTIONARY, REPORT_CANDIDATES, Column, header
from htvs.report.funnel import FunnelRow

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1400px;
  padding:0 1em;color:#1d2733;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #3b6ea8;padding-bottom:.2em;margin-top:1.8em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #c9d3de;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#e8eef5}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
tr:nth-child(even) td{background:#f7f9fb}
.muted{color:#66768a}.flag{color:#a5281b}.ok{color:#1e7d3c}
figure{margin:.8em 0}figure img{max-width:100%;height:auto;border:1px solid #e0e6ed}
.figs{display:flex;flex-wrap:wrap;gap:1em}.figs figure{flex:1 1 420px}
.scroll{overflow-x:auto}code{background:#f1f4f8;padding:0 .2em}
"""

SORT_SCRIPT = """
(function(){
  function key(cell){
    var v = cell.getAttribute('data-sort');
    if (v === null) { v = cell.textContent.trim(); }
    if (v === '') { return null; }
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('thead th').forEach(function(th, col){
      th.addEventListener('click', function(){
        var body = table.tBodies[0];
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        table.querySelectorAll('thead th').forEach(function(h){ h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null && y === null) { return 0; }
          if (x === null) { return 1; }
          if (y === null) { return -1; }
          if (typeof x !== typeof y) { x = String(x); y = String(y); }
          var order = x < y ? -1 : (x > y ? 1 : 0);
          return ascending ? order : -order;
        });
        rows.forEach(function(row){ body.appendChild(row); });
      });
    });
  });
})();
"""


def esc(value: Any) -> str:
    """``value`` as escaped HTML text; "—" for None."""
    return "—" if value is None else html.escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, "—" when missing."""
    return "—" if value is None else f"{value:.{digits}f}"


def sig(value: float | None) -> str:
    """A number with 3 significant digits, "—" when missing."""
    return "—" if value is None else f"{value:.3g}"


def cell(text: str, sort: Any = None, numeric: bool = False, raw: bool = False) -> str:
    """One ``<td>``; ``sort`` is the value the table sorts by (data-sort; "" sorts last)."""
    attrs = ' class="num"' if numeric else ""
    if sort is not None or numeric:
        attrs += f' data-sort="{esc(sort) if sort is not None else ""}"'
    return f"<td{attrs}>{text if raw else esc(text)}</td>"


def figure(uri: str | None, caption: str) -> str:
    """An inline figure, or the caption as a note when there is no figure."""
    if uri is None:
        return f'<p class="muted">{esc(caption)}</p>'
    return (f'<figure><img src="{uri}" alt="{esc(caption)}">'
            f'<figcaption class="muted">{esc(caption)}</figcaption></figure>')


def funnel_table(rows: list[FunnelRow]) -> str:
    head = ("<tr><th>step (—)</th><th>what is counted (—)</th><th>threshold or setting (value and unit)</th>"
            "<th>this campaign (count)</th><th>paper (count)</th></tr>")
    body = []
    for r in rows:
        count = f"{r.count:,}" if isinstance(r.count, int | float) else "—"
        paper = f"{r.paper:,}" if r.paper is not None else "—"
        body.append(f"<tr><td>{esc(r.label)} <span class=muted>({esc(r.key)})</span></td><td>{esc(r.counted)}</td>"
                    f"<td>{esc(r.threshold)}</td><td class=num>{count}</td><td class=num>{paper}</td></tr>")
    return f'<table id="funnel"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _products(row: CandidateRow) -> str:
    parts = []
    if row.reduction_products:
        parts.append(f"at φ_red: {', '.join(row.reduction_products)}")
    if row.oxidation_products:
        parts.append(f"at φ_ox: {', '.join(row.oxidation_products)}")
    if row.decomposition:
        parts.append(f"hull (relaxed): {', '.join(row.decomposition)}")
    return "; ".join(parts) or "—"


def candidate_table(rows: list[CandidateRow]) -> str:
    """The sortable candidate table; a header per :data:`REPORT_CANDIDATES` column, with its unit."""
    show_charge = any(r.charge_balanced is not None for r in rows)
    columns: list[Column] = [c for c in REPORT_CANDIDATES if show_charge or c.name != "charge balanced"]
    head = "".join(f'<th title="{esc(c.meaning)}">{esc(header(c))}</th>' for c in columns)
    body = []
    for r in rows:
        formula = esc(r.formula) + (f'<br><span class=muted>as written: {esc(r.formula_as_written)}</span>'
                                    if r.formula_as_written else "")
        prototype = esc(r.prototype_id or "generated") + (f"<br>{esc(r.space_group)}" if r.space_group else "")
        window = "—" if r.phi_ox_v is None else f"{fmt(r.phi_red_v, 2)}–{fmt(r.phi_ox_v, 2)} ({r.window_source})"
        relaxed = "—" if r.e_hull_relaxed is None else f"{fmt(r.e_hull_relaxed)} ({r.e_hull_relaxed_source})"
        gap = "—" if r.band_gap_ev is None else f"{fmt(r.band_gap_ev, 2)} ± {fmt(r.band_gap_std_ev, 2)}"
        sigma = ("—" if r.sigma_low_mS_cm is None else
                 f"{sig(r.sigma_low_mS_cm)}–{sig(r.sigma_high_mS_cm)} ({r.sigma_source})")
        flags = "; ".join(r.flags) if r.flags else "none"
        flag_class = "ok" if not r.flags else "flag"
        link = f'<a href="{esc(r.cif_link)}">{esc(r.cif_link.rsplit("/", 1)[-1])}</a>' if r.cif_link else "—"
        cells = [
            cell(str(r.rank), r.rank, numeric=True),
            cell(formula, r.formula, raw=True),
            cell(prototype, r.prototype_id or "", raw=True),
            cell(r.origin or "—"),
            cell(window, r.phi_ox_v if r.phi_ox_v is not None else "", numeric=True),
            cell(_products(r)),
            cell(fmt(r.e_hull_predicted), r.e_hull_predicted if r.e_hull_predicted is not None else "", numeric=True),
            cell(relaxed, r.e_hull_relaxed if r.e_hull_relaxed is not None else "", numeric=True),
            cell(gap, r.band_gap_ev if r.band_gap_ev is not None else "", numeric=True),
            cell(sigma, r.sigma_mean_mS_cm if r.sigma_mean_mS_cm is not None else "", numeric=True),
            cell(fmt(r.clscore, 2), r.clscore if r.clscore is not None else "", numeric=True),
        ]
        if show_charge:
            text = "—" if r.charge_balanced is None else ("yes" if r.charge_balanced else "no")
            cells.append(cell(text))
        cells.append(f'<td class="{flag_class}">{esc(flags)}</td>')
        cells.append(cell(link, r.cif_link or "", raw=True))
        body.append(f'<tr data-id="{esc(r.id)}">{"".join(cells)}</tr>')
    return (f'<div class="scroll"><table id="candidates" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def key_value_table(pairs: list[tuple[str, str]], table_id: str | None = None) -> str:
    ident = f' id="{esc(table_id)}"' if table_id else ""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f"<table{ident}><tbody>{rows}</tbody></table>"


def plain_table(headers: list[str], rows: list[list[str]], table_id: str | None = None,
                sortable: bool = False) -> str:
    ident = f' id="{esc(table_id)}"' if table_id else ""
    klass = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table{ident}{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def dictionary_section() -> str:
    parts = []
    for name, columns in DATA_DICTIONARY.items():
        rows = [[c.name, c.unit, c.meaning] for c in columns]
        parts.append(f"<h3>{esc(name)}</h3>" + plain_table(["column", "unit", "meaning"], rows))
    return "".join(parts)


def page(title: str, sections: list[tuple[str, str, str]], subtitle: str) -> str:
    """The whole page: ``sections`` are (anchor, heading, inner HTML)."""
    nav = " · ".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{inner}</section>' for a, h, inner in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=muted>{esc(subtitle)}</p><nav>{nav}</nav>{body}"
        f"<script>{SORT_SCRIPT}</script></body></html>\n"
    )
