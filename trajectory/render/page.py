"""The HTML page around a plotly figure, and where the page gets plotly.js from.

``plotly_js`` (an argument of :func:`trajectory.render.render_html` and
:func:`trajectory.render.evolution_plot_html`) says where plotly.js (about 4.8 MB) comes from:

``"directory"`` (default)
    one shared ``plotly.min.js`` next to the page, written (atomically) only when it is
    missing or differs from the installed plotly's; the page loads it with a relative
    ``<script src>``. Every page of a folder shares that one copy and still opens offline,
    as long as the file travels with the pages.
``"inline"``
    plotly.js inside the page: one self-contained file of about 5 MB.
``"cdn"``
    plotly's CDN URL: the smallest page, but it needs the network to open.
a path to a ``.js`` file
    like ``"directory"``, with the shared copy at that path (written if missing or
    different), referenced relatively from the page. This lets pages in sub-folders share
    one copy: ``graph/evolution/layer_02.html`` with
    ``plotly_js="graph/plotly.min.js"`` loads ``../plotly.min.js``.

Pages also get a side panel, beside the plot (which narrows to make room), that a click
on a point fills with that point's full text:
the trace's ``meta`` when it is a string (one text for all its points), or
``meta[customdata]`` when ``meta`` is a list (one text per point). Those strings are plotly's HTML subset built by the
renderers, with every outside text escaped (:func:`trajectory.render.style.html_text`);
with a feature dashboard they also hold links to its cards (:mod:`trajectory.render.feature_links`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from trajectory.io import atomic_write
from trajectory.render.style import html_text

log = logging.getLogger(__name__)

#: Values of ``plotly_js`` besides a path to a ``.js`` file.
PLOTLY_JS_MODES = ("directory", "inline", "cdn")
#: File name of the shared copy in ``"directory"`` mode.
PLOTLY_JS_FILE = "plotly.min.js"

_STYLE = """
  body { margin: 0; font-family: "DejaVu Sans", Arial, sans-serif; }
  /* the panel sits beside the plot (which narrows to make room), never over it */
  .plot-row { display: flex; align-items: flex-start; }
  .plot-cell { flex: 1 1 auto; min-width: 0; order: 0; }
  #point-panel { order: 1; flex: 0 0 min(430px, 40vw); box-sizing: border-box; position: sticky; top: 8px;
    margin: 8px 8px 0 0; max-height: calc(100vh - 16px); overflow: auto; background: #ffffff; border: 1px solid #999999;
    border-radius: 4px; padding: 8px 10px; font: 12px "DejaVu Sans Mono", monospace;
    box-shadow: 0 2px 8px rgba(0,0,0,0.25); }
  #point-panel[hidden] { display: none; }
  #point-panel button { float: right; margin-left: 6px; }
  #point-panel a { color: #1a5fb4; }
  .page-hint { margin: 0 12px 8px; font-size: 12px; color: #555555; }
"""

#: Runs once the plot exists: a click on a point of a clickable trace pins its text.
_PANEL_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var panel = document.getElementById('point-panel'), body = document.getElementById('point-panel-body');
function show(on) {
  if (panel.hidden === !on) { return; }
  panel.hidden = !on;
  Plotly.Plots.resize(gd);  /* the plot takes the room the panel frees or needs */
}
document.getElementById('point-panel-close').onclick = function () { show(false); };
gd.on('plotly_click', function (ev) {
  var p = ev.points && ev.points[0];
  var meta = p && p.data.meta, text = Array.isArray(meta) ? meta[p.customdata] : meta;
  if (typeof text !== 'string') { return; }
  /* the texts are the renderer's own markup, outside text already escaped */
  body.innerHTML = text;
  show(true);
});
"""

_PANEL = """<aside id="point-panel" hidden><button id="point-panel-close" title="close">×</button>
<div id="point-panel-body"></div></aside>"""


def check_plotly_js(plotly_js: Any) -> str | Path:
    """``plotly_js`` as given when valid (a mode, or a ``Path`` for a ``.js`` path); else a clear ValueError."""
    if isinstance(plotly_js, str) and plotly_js in PLOTLY_JS_MODES:
        return plotly_js
    if isinstance(plotly_js, (str, os.PathLike)) and str(plotly_js).endswith(".js"):
        return Path(plotly_js)
    raise ValueError(f"plotly_js must be one of {', '.join(map(repr, PLOTLY_JS_MODES))} or a path to a .js file "
                     f"(a shared copy of plotly.js), not {plotly_js!r}")


def shared_plotly_js(target: str | Path) -> Path:
    """Write plotly.js to ``target`` unless an identical copy is already there; returns the path.

    The write is atomic, so pages written at the same time never see half a file.
    """
    from plotly.offline import get_plotlyjs

    target = Path(target)
    source = get_plotlyjs().encode("utf-8")
    # compare the size first: reading 4.8 MB for every page of a folder is what we avoid
    if target.is_file() and target.stat().st_size == len(source) and target.read_bytes() == source:
        return target
    with atomic_write(target, "wb") as fh:
        fh.write(source)
    log.info("wrote plotly.js (%.1f MB) to %s", len(source) / 1e6, target)
    return target


def _script_source(plotly_js: str | Path, page: Path) -> bool | str:
    """What plotly's ``to_html(include_plotlyjs=...)`` needs for this mode and page."""
    if plotly_js == "inline":
        return True
    if plotly_js == "cdn":
        return "cdn"
    shared = shared_plotly_js(page.parent / PLOTLY_JS_FILE if plotly_js == "directory" else Path(plotly_js))
    # forward slashes: a URL, also on Windows
    return Path(os.path.relpath(shared.resolve(), page.parent.resolve())).as_posix()


def write_page(
    fig,
    path: str | Path,
    *,
    div_id: str,
    title: str,
    plotly_js: str | Path = "directory",
    height: str = "720px",
    config: dict | None = None,
    hint: str = "",
) -> Path:
    """Write ``fig`` as an HTML page (atomically): title, plot, hint line, click panel.

    ``title`` and ``hint`` are raw text (escaped here). ``plotly_js``: see the module
    docstring. Returns the path.
    """
    plotly_js = check_plotly_js(plotly_js)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    div = fig.to_html(
        include_plotlyjs=_script_source(plotly_js, path), full_html=False, div_id=div_id, default_width="100%",
        default_height=height, config=config or {}, post_script=_PANEL_SCRIPT,
    )
    hint_html = f'<p class="page-hint">{html_text(hint)}</p>' if hint else ""
    page = (f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>{html_text(title)}</title>\n'
            # the panel comes first (the plot's script finds it), and shows on the right (CSS order)
            f"<style>{_STYLE}</style>\n</head>\n<body>\n<div class=\"plot-row\">{_PANEL}\n<div class=\"plot-cell\">\n"
            f"{div}\n</div></div>\n{hint_html}\n</body>\n</html>\n")
    with atomic_write(path) as fh:
        fh.write(page)
    return path
