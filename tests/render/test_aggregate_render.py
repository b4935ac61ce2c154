"""Pictures of aggregate and diff graphs: what is drawn (top-N edges, layered layout, three
colours), hover texts with histograms and explanations, escaping, and the written files."""
from __future__ import annotations

import networkx as nx
import pytest

from trajectory.evolution.result import Evolution
from trajectory.graph.aggregate import aggregate
from trajectory.graph.diff import diff_graph
from trajectory.render.aggregate import (
    aggregate_figure,
    aggregate_view,
    render_aggregate_html,
    render_aggregate_png,
)
from trajectory.render.diff import SIDE_COLOURS, diff_figure, render_diff_html, render_diff_png

EMPTY = lambda n: [([], [])] * (n + 2)  # noqa: E731


def brings(feature, rank_list):
    """Steps of prefix length 3 (query 2): ``feature`` arrives at key 1 with final rank given by ``rank_list``."""
    row = (rank_list, [3.0 - 0.1 * i for i in range(len(rank_list))])
    return [([1], [1.0]), ([1], [1.0]), row, row, row]


def evo(tokens, feature):
    """Layer 0: ``feature`` arrives at token 2 from key 1 (rank 1)."""
    return Evolution.from_lists(tokens, {(2, 0): EMPTY(2), (3, 0): brings(feature, [feature, 1])}, k=4,
                                model_name="hand")


@pytest.fixture(scope="module")
def agg():
    items = [evo(["<bos>", "a", "b"], 7), evo(["<bos>", "a", "c"], 7), evo(["<bos>", "<x>", "c"], 9)]
    return aggregate(items, T=3, explanations={(0, 7): "cats & <dogs>"})


def test_view_keeps_top_edges_and_stacks_features(agg):
    assert agg.number_of_edges() == 2
    sub, pos, rows = aggregate_view(agg, top_n=1)
    assert list(sub.edges) == [((-1, "a"), (0, 7))]  # 2 prompts beat 1
    assert rows == [-1, 0]
    assert pos[(0, 7)][1] == 1.0 and pos[(-1, "a")][1] == 0.0
    sub, pos, _ = aggregate_view(agg, top_n=10)
    # layer 0 holds f7 (2 prompts) in the middle and f9 beside it
    assert pos[(0, 7)][0] == 0.0 and abs(pos[(0, 9)][0]) == 1.0 and pos[(0, 9)][1] == 1.0
    with pytest.raises(ValueError, match="kind='aggregate'"):
        aggregate_view(nx.DiGraph())


def test_html_hover_has_histograms_and_explanations(agg, tmp_path):
    fig = aggregate_figure(agg, top_n=10)
    nodes = next(t for t in fig.data if t.name == "nodes")
    text = {t.split("<br>")[0]: t for t in nodes.hovertext}
    f7 = text["<b>L0 feature 7</b> · newcomer in 2 of 3 prompts · 2 occurrences"]
    assert "brought by key tokens: &#x27;a&#x27; ×2" in f7
    assert "arrives at: &#x27;b&#x27; ×1, &#x27;c&#x27; ×1" in f7
    assert "cats &amp; &lt;dogs&gt;" in f7  # explanation, escaped
    assert any("&lt;x&gt;" in t for t in nodes.hovertext)  # token strings escaped too
    edges = next(t for t in fig.data if t.name == "edges")
    assert any("in 2 of 3 prompts" in t for t in edges.hovertext)
    page = render_aggregate_html(agg, tmp_path / "agg.html", plotly_js="inline")
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<script src=" not in html  # self-contained
    assert "feature 7" in html and "<dogs>" not in html


def test_png(agg, tmp_path):
    from PIL import Image

    path = render_aggregate_png(agg, tmp_path / "agg.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 1000
    empty = aggregate([Evolution.from_lists(["<bos>", "a"], {(2, 0): EMPTY(2)}, k=4)], T=3)
    assert render_aggregate_png(empty, tmp_path / "empty.png").stat().st_size > 1000


def test_diff_pictures_use_three_colours(tmp_path):
    a = Evolution.from_lists(["<bos>", "a", "b", "d"], {(2, 0): EMPTY(2), (3, 0): brings(7, [7, 1]),
                                                        (4, 0): [([1], [1.0])] * 2 + [([1, 5], [2.0, 1.0])] * 4}, k=4)
    from_key_2 = [([1], [1.0])] * 3 + [([8, 1], [2.0, 1.0])] * 2  # feature 8 arrives at key 2 (itself)
    b = Evolution.from_lists(["<bos>", "a", "c", "d"], {(2, 0): EMPTY(2), (3, 0): from_key_2,
                                                        (4, 0): [([1], [1.0])] * 2 + [([1, 5], [2.0, 1.0])] * 4}, k=4)
    g = diff_graph(a, b, T=3)
    assert {s for *_, s in g.edges(data="side")} == {"a", "b", "both"}
    fig = diff_figure(g)
    colours = {t.line.color for t in fig.data if t.mode == "lines"}
    assert colours == set(SIDE_COLOURS.values())
    tips = [t for tr in fig.data if tr.mode == "markers" and tr.hovertext for t in tr.hovertext]
    assert any("only in A" in t and "features only A: 7" in t for t in tips)
    assert render_diff_png(g, tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    assert "only in B" in render_diff_html(g, tmp_path / "d.html").read_text(encoding="utf-8")
    assert (tmp_path / "plotly.min.js").is_file()  # default: the shared copy beside the page
    with pytest.raises(ValueError, match="kind='diff'"):
        diff_figure(nx.DiGraph())


@pytest.mark.browser
def test_pages_in_a_browser(agg, tmp_path):
    """Both pages render offline in headless Chromium, with no script error, and hover
    over a feature shows its histogram and (escaped) explanation as text."""
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no Chromium at /usr/bin/chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from trajectory.render.aggregate import AGGREGATE_DIV_ID

    agg_page = render_aggregate_html(agg, tmp_path / "agg.html")
    a = Evolution.from_lists(["<bos>", "a", "b"], {(2, 0): EMPTY(2), (3, 0): brings(7, [7, 1])}, k=4)
    b = Evolution.from_lists(["<bos>", "a", "c"], {(2, 0): EMPTY(2), (3, 0): EMPTY(3)}, k=4)
    diff_page = render_diff_html(diff_graph(a, b, T=3), tmp_path / "diff.html")
    _, pos, _ = aggregate_view(agg)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        try:
            for path in (agg_page, diff_page):
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                errors, outside = [], []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)


                def route(r, outside=outside):  # nothing beyond file:// (the page opens offline)
                    if r.request.url.startswith("file://"):
                        return r.continue_()
                    outside.append(r.request.url)
                    return r.abort()

                page.route("**/*", route)
                page.goto(path.resolve().as_uri())
                page.wait_for_selector(".main-svg", timeout=60_000)  # a loaded machine is slow
                assert errors == [] and outside == [], (path.name, errors, outside)
                if path == agg_page:
                    x, y = pos[(0, 7)]
                    xy = page.evaluate(
                        """([id, x, y]) => { const gd = document.getElementById(id), fl = gd._fullLayout;
                             const r = gd.getBoundingClientRect();
                             return [r.left + fl._size.l + fl.xaxis.l2p(x), r.top + fl._size.t + fl.yaxis.l2p(y)]; }""",
                        [AGGREGATE_DIV_ID, x, y])
                    page.mouse.move(*xy)
                    page.wait_for_selector(".hoverlayer .hovertext", timeout=15_000)
                    tip = page.locator(".hoverlayer .hovertext").first.text_content()
                    assert "feature 7" in tip and "'a' ×2" in tip and "cats & <dogs>" in tip
                page.close()
        finally:
            browser.close()
