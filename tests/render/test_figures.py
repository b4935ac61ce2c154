"""What the pictures tell a reader: edges that answer hover along their length (crossing
ones included), short tooltips with the full list on click, legends that say what edge
width, node size and grey nodes mean, and a true rank axis on evolution plots.

Checked on the figure objects (plotly data and layout decoded from the page; the
matplotlib ``Figure`` before it is saved); tests/render/test_browser.py checks the same
in a real browser.
"""
from __future__ import annotations

import io
import re

import matplotlib
import networkx as nx
import numpy as np
import pytest

from trajectory.evolution.result import Evolution
from trajectory.render import evolution_plot_html, evolution_plot_png, render_html
from trajectory.render.evolution_plot import evolution_png_figure, rank_lines
from trajectory.render.png import _rc, png_figure
from tests.render.test_render import (
    edge_hover_points,
    hover_texts,
    load_rgb,
    make_evolution,
    make_graph,
    on_segment,
    plotly_call,
    small_graph,
)

PIL = pytest.importorskip("PIL.Image")


def crossing_graph():
    """Two L1 edges whose midpoints coincide: (1, L0) -> (4, L1) and (2, L0) -> (3, L1)
    both pass through (2.5, the middle of rows L0 and L1); the node (4, L1) receives 15 features."""
    tokens = ["<bos>", "The", " dark", " room", " Mark"]
    many = [(1000 + i, i + 1, 10.0 - 0.5 * i, f"explanation number {i}") for i in range(15)]
    return make_graph(tokens, [(1, 4, 1, many), (2, 3, 1, [(77, 3, 2.5, "the other edge")])], layers=[0, 1])


def test_crossing_edges_share_their_common_point_and_keep_their_own(tmp_path):
    data, _ = plotly_call(render_html(crossing_graph(), tmp_path / "g.html").read_text(encoding="utf-8"),
                          "trajectory-graph")
    points = edge_hover_points(data)
    rows = {0: 1, 1: 2}  # emb is row 0
    long_edge, short_edge = ((1, rows[0]), (4, rows[1])), ((2, rows[0]), (3, rows[1]))
    middle = [h for x, y, h in points if (x, y) == (2.5, 1.5)]
    assert len(middle) == 1, "one hover point at the common midpoint"
    assert "key 1 " in middle[0] and "key 2 " in middle[0] and "2 edges cross here" in middle[0]
    # short: each edge's two heading lines; its features come with a click
    assert not re.search(r"feature \d", middle[0]) and "click" in middle[0]
    assert len(middle[0].split("<br>")) <= 1 + 2 * 2 + 1
    for edge, mine, other in ((long_edge, "key 1 ", "key 2 "), (short_edge, "key 2 ", "key 1 ")):
        own = [h for x, y, h in points if on_segment((x, y), *edge) is not None and (x, y) != (2.5, 1.5)]
        # every other point of the edge is its own: hovering there shows this edge alone
        assert len(own) >= 8 and all(mine in h and other not in h for h in own)


def test_tooltips_are_capped_and_the_click_panel_has_everything(tmp_path):
    data, _ = plotly_call(render_html(crossing_graph(), tmp_path / "g.html").read_text(encoding="utf-8"),
                          "trajectory-graph")
    nodes = next(t for t in data if t["name"] == "nodes")
    i = next(i for i, (x, y) in enumerate(zip(nodes["x"], nodes["y"])) if (x, y) == (4, 2))
    tip, panel = nodes["hovertext"][i], nodes["meta"][nodes["customdata"][i]]
    shown = [f for f in range(1000, 1015) if f"feature {f} " in tip]
    assert shown == [1000, 1001, 1002, 1003, 1004]  # the five strongest (ranks 1..5)
    assert "and 10 more" in tip
    assert all(f"feature {f} " in panel for f in range(1000, 1015)) and "more" not in panel
    assert all(f"explanation number {i}" in panel for i in range(15))
    # the edge that carries the 15 features: the same cap in its tooltip, all of them on click
    edge = next(t for t in data if str(t.get("name", "")).startswith("edge ") and "and 10 more" in t["hovertext"])
    assert all(f"feature {f} " in edge["meta"] for f in range(1000, 1015))
    # a tooltip: 2 heading lines, 5 features with one explanation line each, "and 10 more"
    assert max(len(h.split("<br>")) for h in hover_texts(data)) == 2 + 5 * 2 + 1


def legend_entries(data) -> dict[str, list[str]]:
    """Legend group title -> the names of its entries, from the figure data."""
    out: dict[str, list[str]] = {}
    for t in data:
        if t.get("showlegend"):
            title = (t.get("legendgrouptitle") or {}).get("text", "")
            out.setdefault(title if title else t.get("legendgroup", ""), []).append(t["name"])
    return out


def test_html_legends_say_what_width_size_and_grey_mean(tmp_path):
    g = small_graph()  # edges carry 1, 2 or 3 trajectories; node (1, 0) receives nothing
    data, layout = plotly_call(render_html(g, tmp_path / "g.html").read_text(encoding="utf-8"), "trajectory-graph")
    legend = legend_entries(data)
    width = next(k for k in legend if k.startswith("edge width = trajectories"))
    assert "one newcomer" in width and "feature the edge carried" in width
    assert legend[width] == ["1 trajectory", "3 trajectories"]  # 1, max // 2 = 1 and the maximum, 3
    size = next(k for k in legend if k.startswith("node size = newcomer features"))
    assert legend[size][:3] == ["1 newcomer", "6 newcomers", "12 or more newcomers"]
    assert any(n.startswith("grey: no newcomer arrives") for names in legend.values() for n in names)
    # the legend's lines are as wide as the edges they stand for
    drawn = {t["name"].split(", ")[1]: t["line"]["width"] for t in data
             if t.get("mode") == "lines" and not t.get("showlegend")}  # "rank 12, 3 trajectories" -> width
    shown = {t["name"]: t["line"]["width"] for t in data if t.get("showlegend") and t.get("mode") == "lines"}
    assert shown == {k: drawn[k] for k in ("1 trajectory", "3 trajectories")}
    assert layout["legend"]["itemclick"] is False  # clicking the legend must not hide edges or nodes
    # the edge tooltip says what a trajectory is
    assert any("3 trajectories (newcomer features carried)" in h for h in hover_texts(data))


def test_png_legends_say_what_width_size_and_grey_mean():
    fig = png_figure(small_graph(), dpi=50)
    legends = {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in fig.legends}
    width = next(k for k in legends if k.startswith("edge width = trajectories"))
    assert "one newcomer feature the edge carried" in width
    assert legends[width] == ["1 trajectory", "3 trajectories"]
    size = next(k for k in legends if k.startswith("node size = newcomer features"))
    assert legends[size][:3] == ["1 newcomer", "6 newcomers", "12 or more"]
    assert legends[size][3].startswith("grey: none")
    # the legend's markers have the nodes' own sizes (scatter areas in pt² = legend diameters in pt, squared):
    # the one-newcomer entry that of nodes receiving one feature, the grey entry that of the grey nodes
    g = small_graph()
    counts = [d["n_newcomers"] for _, d in g.nodes(data=True)]  # the scatter's order
    nodes = [c for c in fig.axes[0].collections if len(getattr(c, "get_sizes", list)()) == len(counts)][0]
    area = dict(zip(counts, nodes.get_sizes()))
    assert set(counts) == {0, 1, 2, 3}
    handles = next(lg for lg in fig.legends if lg.get_title().get_text() == size).legend_handles
    legend_area = [h.get_markersize() ** 2 for h in handles]
    assert legend_area[0] == pytest.approx(area[1]) and legend_area[3] == pytest.approx(area[0])
    assert area[0] < area[1] < area[2] < area[3] and legend_area[0] < legend_area[1] < legend_area[2]
    assert png_figure(nx.DiGraph(), dpi=50).legends == []  # an empty graph has nothing to explain


def topk_evolution() -> Evolution:
    """The hand-made evolution of test_render, recorded as coming from a TopK SAE with k = 5
    that at most 6 features were active for (top-k of the evolution: 6; asked for 400)."""
    base = make_evolution()
    lists = {(n, 0): [(i.tolist(), v.tolist()) for i, v in (base.topk(n, 0, s) for s in range(n + 2))]
             for n in range(2, 5)}
    saes = {"0": dict(hook_name="blocks.0.hook_resid_post", architecture="TopKSAE", d_sae=64, k=5)}
    return Evolution.from_lists(base.tokens, lists, k=400, model_name="tiny-model", metadata={"saes": saes})


def test_evolution_rank_axis_says_what_is_true(tmp_path):
    evo = topk_evolution()
    most = max(len(evo.topk(4, 0, s)[0]) for s in range(6))  # the most features listed at one step: 6
    assert most == 6
    data, layout = plotly_call(evolution_plot_html(evo, 0, 4, tmp_path / "e.html", T=3).read_text(encoding="utf-8"),
                               "evolution-plot")
    html_label = layout["yaxis"]["title"]["text"]
    fig = evolution_png_figure(rank_lines(evo, 0, 4, T=3))
    png_label = fig.axes[0].get_ylabel()
    for label in (html_label, png_label):
        assert "top-400" not in label  # the old label claimed a top-400 ranking
        assert "rank among active features" in label and "top 400 kept" in label
        assert "TopK SAE: at most 5 active" in label and f"here at most {most} active" in label
    # without the SAE's k on record (older files), the label says only what the evolution knows
    plain = rank_lines(make_evolution(), 0, 4, T=3)
    label = evolution_png_figure(plain).axes[0].get_ylabel()
    assert "TopK" not in label and "top 6 kept" in label and "here at most 6 active" in label


def test_pngs_are_written_with_a_small_palette(tmp_path):
    """256 colours: about a quarter of the bytes of full RGB for the same picture."""
    evo = make_evolution()
    path = evolution_plot_png(evo, 0, 4, tmp_path / "e.png", T=3, newcomers=[7, 3], dpi=80)
    with PIL.open(path) as im:
        assert im.mode == "P"
    rgb = load_rgb(path)
    full = io.BytesIO()
    with matplotlib.rc_context(_rc()):  # the settings save_png draws under
        evolution_png_figure(rank_lines(evo, 0, 4, T=3, newcomers=[7, 3]), dpi=80).savefig(
            full, format="png", dpi=80, facecolor="white")
    full.seek(0)
    reference = np.asarray(PIL.open(full).convert("RGB")).astype(int)
    assert rgb.shape == reference.shape
    assert path.stat().st_size < 0.6 * full.getbuffer().nbytes
    # the same picture: no pixel off by more than a few levels per channel on average
    assert np.abs(rgb - reference).mean() < 2.0
