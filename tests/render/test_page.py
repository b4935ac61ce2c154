"""Where the HTML pages get plotly.js from (trajectory.render.page): one shared copy per
folder by default, inline or CDN on request, and a clear error for anything else."""
from __future__ import annotations

import os
import re

import networkx as nx
import pytest

from trajectory.render import evolution_plot_html, render_html
from tests.render.test_render import make_evolution, small_graph

pytest.importorskip("plotly")


def plotly_source() -> bytes:
    """The installed plotly's plotly.js, read from its package data (not through the code under test)."""
    import plotly

    path = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")
    with open(path, "rb") as fh:
        return fh.read()


def script_sources(page: str) -> list[str]:
    return re.findall(r'<script[^>]*\bsrc="([^"]+)"', page)


def test_directory_mode_shares_one_plotly_js_per_folder(tmp_path):
    folder = tmp_path / "graph"
    g = small_graph()
    pages = [render_html(g, folder / "graph.html"), render_html(nx.DiGraph(), folder / "empty.html"),
             evolution_plot_html(make_evolution(), 0, 4, folder / "layer_00.html", T=3)]
    assert sorted(p.name for p in folder.iterdir()) == ["empty.html", "graph.html", "layer_00.html", "plotly.min.js"]
    assert (folder / "plotly.min.js").read_bytes() == plotly_source()
    for p in pages:
        text = p.read_text(encoding="utf-8")
        assert script_sources(text) == ["plotly.min.js"]
        # plotly.js itself is not in the page: a few hundred kB at most instead of ~5 MB
        assert len(text) < 500_000 and "cdn.plot.ly" not in text
    inline = render_html(g, tmp_path / "inline" / "graph.html", plotly_js="inline")
    assert script_sources(inline.read_text(encoding="utf-8")) == []
    assert inline.stat().st_size > len(plotly_source()) > 20 * pages[0].stat().st_size


def test_shared_copy_is_written_only_when_missing_or_different(tmp_path):
    js = tmp_path / "plotly.min.js"
    render_html(small_graph(), tmp_path / "a.html")
    first = js.stat()
    render_html(small_graph(), tmp_path / "b.html")
    assert js.stat().st_ino == first.st_ino and js.stat().st_mtime_ns == first.st_mtime_ns  # left alone
    js.write_text("/* an old or broken plotly.js */")
    render_html(small_graph(), tmp_path / "c.html")
    assert js.read_bytes() == plotly_source()  # replaced
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_pages_in_sub_folders_share_the_parent_copy(tmp_path):
    """The graph stage's layout: graph/graph.html and graph/evolution/layer_XX.html, one copy in graph/."""
    folder = tmp_path / "graph"
    render_html(small_graph(), folder / "graph.html")
    shared = folder / "plotly.min.js"
    evo = make_evolution()
    page = evolution_plot_html(evo, 0, 4, folder / "evolution" / "layer_00.html", T=3, plotly_js=shared)
    assert script_sources(page.read_text(encoding="utf-8")) == ["../plotly.min.js"]
    assert sorted(p.name for p in (folder / "evolution").iterdir()) == ["layer_00.html"]
    as_text = evolution_plot_html(evo, 0, 4, folder / "evolution" / "layer_01.html", T=3, plotly_js=str(shared))
    assert script_sources(as_text.read_text(encoding="utf-8")) == ["../plotly.min.js"]
    assert shared.read_bytes() == plotly_source()


def test_cdn_mode_and_bad_values(tmp_path):
    page = render_html(small_graph(), tmp_path / "g.html", plotly_js="cdn").read_text(encoding="utf-8")
    srcs = script_sources(page)
    assert len(srcs) == 1 and srcs[0].startswith("https://cdn.plot.ly/plotly-")
    assert [p.name for p in tmp_path.iterdir()] == ["g.html"]
    for bad in ("dir", "inline.html", None, True):
        with pytest.raises(ValueError, match="plotly_js must be one of 'directory', 'inline', 'cdn' or a path"):
            render_html(small_graph(), tmp_path / "x.html", plotly_js=bad)
    with pytest.raises(ValueError, match="plotly_js must be"):
        evolution_plot_html(make_evolution(), 0, 4, tmp_path / "e.html", T=3, plotly_js="directory/")
    assert not (tmp_path / "x.html").exists()
