"""Dashboard pages: one self-contained HTML file per SAE and an ``index.html``.

A page embeds its :class:`~trajectory.dashboard.data.LayerDashboard` JSON in a
``<script type="application/json">`` element (``<``, ``>`` and ``&`` written as JSON
escapes, so no text can close the element) and inline CSS and JavaScript; it loads
nothing from the network. The script lists the features that pass the search box
(feature id or explanation text) and the density / max-activation ranges, in the
chosen order, 100 rows at a time (more as the list scrolls), and builds a feature's
full card only when it is opened — so a 16k-feature page opens in about the time it
takes to parse its JSON. Every text from the corpus, the tokenizer or explanations
goes into the page through ``textContent``, never as HTML.

URL scheme (what graphs link to): ``<folder>/<name>.html#f<feature>``, e.g.
``layer_06.html#f1570``, opens feature 1570's card.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Sequence

from trajectory.dashboard.data import LayerDashboard, dashboard_json


def page_name(dashboard: LayerDashboard) -> str:
    """File name of a dashboard's page (``layer_06.html``)."""
    return f"{dashboard.name}.html"


def script_json(value) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` left as such."""
    return _script_safe(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _script_safe(text: str) -> str:
    """JSON ``text`` with ``<``, ``>`` and ``&`` written as JSON escapes (same value)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def layer_page(dashboard: LayerDashboard, others: Sequence[str] = (), data_json: str | None = None) -> str:
    """The HTML of ``dashboard``'s page; ``others``: names of the sibling pages to link;
    ``data_json``: its JSON file's text when already made (else made here)."""
    data_json = dashboard_json(dashboard.to_dict()) if data_json is None else data_json
    title = f"{dashboard.model_name} · {dashboard.name} · feature dashboard"
    nav = {"others": list(others)}
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><a href=\"index.html\">index</a> <h1>{html.escape(title)}</h1><nav id=\"nav\"></nav>"
        f"<div id=\"meta\"></div></header>"
        f"<div id=\"controls\"><input id=\"q\" type=\"search\" placeholder=\"feature id or explanation\">"
        f"<label>density <input id=\"dmin\" size=\"7\" placeholder=\"min\"> – <input id=\"dmax\" size=\"7\" "
        f"placeholder=\"max\"></label> <label>max act <input id=\"mmin\" size=\"6\" placeholder=\"min\"> – "
        f"<input id=\"mmax\" size=\"6\" placeholder=\"max\"></label> <label>sort <select id=\"sort\">"
        f"<option value=\"id\">feature id</option><option value=\"-density\">density ↓</option>"
        f"<option value=\"density\">density ↑</option><option value=\"-max_activation\">max act ↓</option>"
        f"</select></label> <span id=\"count\"></span></div>"
        f"<main><div id=\"list\"></div><aside id=\"card\"><p class=\"hint\">click a feature</p></aside></main>"
        f"<script type=\"application/json\" id=\"data\">{_script_safe(data_json)}</script>"
        f"<script type=\"application/json\" id=\"navdata\">{script_json(nav)}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )


def index_page(dashboards: Sequence[LayerDashboard]) -> str:
    """``index.html``: one row per page with its model, hook, features and corpus."""
    rows = "".join(
        f"<tr><td><a href=\"{html.escape(page_name(d))}\">{html.escape(d.name)}</a></td>"
        f"<td>{html.escape(d.hook_name)}</td><td>{len(d.features)}</td><td>{d.sae.get('d_sae', '')}</td>"
        f"<td>{d.n_tokens}</td><td>{html.escape(d.corpus)}</td></tr>"
        for d in dashboards
    )
    model = html.escape(dashboards[0].model_name) if dashboards else ""
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{model} · feature dashboards</title>"
        f"<style>{_CSS}</style></head><body><h1>{model} · feature dashboards</h1><table class=\"index\">"
        f"<tr><th>page</th><th>hook</th><th>features</th><th>d_sae</th><th>tokens</th><th>corpus</th></tr>{rows}"
        f"</table></body></html>\n"
    )


def write_pages(dashboards: Sequence[LayerDashboard], out: str | Path) -> list[Path]:
    """Write ``<name>.json`` and ``<name>.html`` per dashboard and ``index.html`` into
    ``out`` (each file atomically); returns the paths written."""
    from trajectory.io import atomic_write

    out = Path(out)
    names = [d.name for d in dashboards]
    written = []
    for d in dashboards:
        text = dashboard_json(d.to_dict())  # once: the file and the page embed the same JSON (same `created`)
        with atomic_write(out / f"{d.name}.json") as fh:
            fh.write(text)
        path = out / page_name(d)
        with atomic_write(path) as fh:
            fh.write(layer_page(d, [n for n in names if n != d.name], text))
        written += [out / f"{d.name}.json", path]
    with atomic_write(out / "index.html") as fh:
        fh.write(index_page(dashboards))
    return written + [out / "index.html"]


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222}
header{padding:8px 16px;border-bottom:1px solid #ddd}header h1{display:inline;font-size:18px;margin-left:12px}
#nav a{margin-right:6px;font-size:12px}#meta{font-size:12px;color:#666}
#controls{padding:8px 16px;background:#f6f6f6;border-bottom:1px solid #ddd}#controls input[type=search]{width:240px}
main{display:flex;height:calc(100vh - 110px)}#list{width:38%;overflow:auto;border-right:1px solid #ddd}
#card{flex:1;overflow:auto;padding:8px 16px}
.row{padding:4px 12px;border-bottom:1px solid #eee;cursor:pointer}.row:hover,.row.sel{background:#eef4ff}
.row .fid{font-weight:600;margin-right:8px}.row .num{color:#666;font-size:12px;margin-left:8px}
.ex{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;margin:2px 0;padding:2px;border-bottom:1px dotted #eee}
.tok{border-radius:2px}.tok.peak{outline:2px solid #c00}.val{color:#888;margin-right:6px}
table{border-collapse:collapse;font-size:12px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.stats td:first-child{color:#666}.hint{color:#888}h3{margin:12px 0 4px;font-size:14px}.more{padding:8px;color:#888}
.index{margin:16px}
"""

_JS = r"""
"use strict";
const D = JSON.parse(document.getElementById('data').textContent);
const NAV = JSON.parse(document.getElementById('navdata').textContent);
const byId = new Map(D.features.map(c => [c.feature, c]));
const $ = id => document.getElementById(id);
const PAGE = 100;
let shown = [], rendered = 0, current = null;
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text); return e; }
function fmt(x) { return (typeof x === 'number') ? (Math.abs(x) >= 1e-3 || x === 0 ? +x.toPrecision(4) : x.toExponential(2)) : ''; }
function num(id) { const v = $(id).value.trim(); return v === '' ? null : Number(v); }
function tokText(i) { const s = D.tokens[String(i)]; return (s === undefined ? '<' + i + '>' : s).replace(/\n/g, '\u21b5'); }
function matches(c, q, dmin, dmax, mmin, mmax) {
  const id = /^#?f(\d+)$/.exec(q);  // "#f42" / "f42": that id only; other text: the id or the explanation
  if (id) { if (String(c.feature) !== id[1]) return false; }
  else if (q && !(String(c.feature) === q || (c.explanation || '').toLowerCase().includes(q))) return false;
  if (dmin !== null && !(c.density >= dmin)) return false; if (dmax !== null && !(c.density <= dmax)) return false;
  if (mmin !== null && !(c.max_activation >= mmin)) return false; if (mmax !== null && !(c.max_activation <= mmax)) return false;
  return true; }
function update() {
  const q = $('q').value.trim().toLowerCase();
  const args = [q, num('dmin'), num('dmax'), num('mmin'), num('mmax')];
  shown = D.features.filter(c => matches(c, ...args));
  const key = $('sort').value, sign = key.startsWith('-') ? -1 : 1, k = key.replace('-', '');
  if (k !== 'id') shown.sort((a, b) => sign * (a[k] - b[k]) || a.feature - b.feature);
  $('count').textContent = shown.length + ' of ' + D.features.length + ' features';
  $('list').replaceChildren(); rendered = 0; more(); }
function more() {
  const list = $('list'); const old = list.querySelector('.more'); if (old) old.remove();
  for (const c of shown.slice(rendered, rendered + PAGE)) {
    const r = el('div', 'row'); r.dataset.f = c.feature; r.id = 'row' + c.feature;
    r.append(el('span', 'fid', '#' + c.feature), el('span', 'exp', c.explanation || ''),
             el('span', 'num', 'density ' + fmt(c.density) + ' · max ' + fmt(c.max_activation)));
    r.onclick = () => { location.hash = 'f' + c.feature; }; list.append(r); }
  rendered = Math.min(rendered + PAGE, shown.length);
  if (rendered < shown.length) { const m = el('div', 'more', (shown.length - rendered) + ' more…'); list.append(m);
    new IntersectionObserver((es, o) => { if (es[0].isIntersecting) { o.disconnect(); more(); } }).observe(m); } }
function example(ex) {
  const div = el('div', 'ex'); const top = Math.max(...ex.activations.map(Math.abs), 1e-9);
  div.append(el('span', 'val', fmt(ex.activation)));
  ex.token_ids.forEach((t, i) => { const a = ex.activations[i]; const s = el('span', 'tok' + (i === ex.peak ? ' peak' : ''), tokText(t));
    s.title = tokText(t) + ': ' + fmt(a); if (a > 0) s.style.background = 'rgba(255,110,0,' + (0.1 + 0.8 * a / top).toFixed(3) + ')';
    div.append(s); });
  return div; }
function histogram(c) {
  const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg'), h = c.histogram, W = 360, H = 80;
  svg.setAttribute('width', W); svg.setAttribute('height', H + 16); const top = Math.max(...h, 1);
  h.forEach((n, i) => { const r = document.createElementNS(ns, 'rect'); const bw = W / Math.max(h.length, 1);
    r.setAttribute('x', i * bw); r.setAttribute('width', Math.max(bw - 1, 1)); r.setAttribute('y', H - H * n / top);
    r.setAttribute('height', H * n / top); r.setAttribute('fill', '#e8731c');
    const t = document.createElementNS(ns, 'title');
    t.textContent = fmt(D.hist_edges[c.hist_start + i]) + '–' + fmt(D.hist_edges[c.hist_start + i + 1]) + ': ' + n;
    r.append(t); svg.append(r); });
  const lab = document.createElementNS(ns, 'text'); lab.setAttribute('y', H + 13); lab.setAttribute('font-size', 11);
  lab.textContent = h.length ? fmt(D.hist_edges[c.hist_start]) + ' … ' + fmt(D.hist_edges[c.hist_start + h.length]) + ' (log bins)' : 'never active';
  svg.append(lab); return svg; }
function openCard(f) {
  const c = byId.get(f), card = $('card'); card.replaceChildren();
  if (!c) { card.append(el('p', 'hint', 'feature ' + f + ' is not on this page')); return; }
  if (current) { const o = $('row' + current); if (o) o.classList.remove('sel'); }
  current = f; const r = $('row' + f); if (r) r.classList.add('sel');
  card.dataset.feature = f; card.append(el('h2', '', 'feature ' + f));
  if (c.explanation) card.append(el('p', 'explanation', c.explanation));
  const st = el('table', 'stats');
  [['density', c.density], ['active tokens', c.n_active], ['max', c.max_activation], ['mean', c.mean_activation],
   ['mean when active', c.mean_active]].forEach(([k, v]) => { const tr = el('tr'); tr.append(el('td', '', k), el('td', '', fmt(v))); st.append(tr); });
  card.append(st, el('h3', '', 'activation histogram'), histogram(c), el('h3', '', 'top examples'));
  c.examples.forEach(ex => card.append(example(ex)));
  if (!c.examples.length) card.append(el('p', 'hint', 'never active on the corpus'));
  c.bands.slice().reverse().forEach(b => { if (!b.examples.length) return;
    card.append(el('h3', '', 'activations in (' + fmt(b.low) + ', ' + fmt(b.high) + ']')); b.examples.forEach(ex => card.append(example(ex))); });
  if (c.top_logits.length) { card.append(el('h3', '', 'logit effects'));
    const t = el('table'); const h = el('tr'); ['promoted', '', 'suppressed', ''].forEach(x => h.append(el('th', '', x))); t.append(h);
    c.top_logits.forEach((p, i) => { const q = c.bottom_logits[i] || ['', '']; const tr = el('tr');
      tr.append(el('td', 'tok', p[0].replace(/\n/g, '\u21b5')), el('td', '', fmt(p[1])), el('td', 'tok', q[0].replace(/\n/g, '\u21b5')), el('td', '', fmt(q[1]))); t.append(tr); });
    card.append(t); }
  if (c.neighbours.length) { card.append(el('h3', '', 'nearest features (decoder cosine)')); const p = el('p');
    c.neighbours.forEach(([g, cos]) => { const a = el('a', '', '#' + g + ' (' + fmt(cos) + ')'); a.href = '#f' + g; p.append(a, ' '); });
    card.append(p); } }
function fromHash() { const m = /^#f(\d+)$/.exec(location.hash); if (m) openCard(Number(m[1])); }
const meta = D.model_name + ' · ' + D.hook_name + ' · SAE d_sae=' + D.sae.d_sae + ' · ' + D.features.length + ' features · '
  + D.n_tokens + ' tokens of ' + D.corpus;
$('meta').textContent = meta;
NAV.others.forEach(n => { const a = el('a', '', n); a.href = n + '.html'; $('nav').append(a); });
['q', 'dmin', 'dmax', 'mmin', 'mmax'].forEach(id => $(id).addEventListener('input', update));
$('sort').addEventListener('change', update);
window.addEventListener('hashchange', fromHash);
update(); fromHash();
"""
