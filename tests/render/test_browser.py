"""The interactive HTML pages in a real browser: headless Chromium (Debian's package,
driven by Playwright; no browser is downloaded).

Checks that the page renders offline (plot SVG present, plotly.js from the shared copy
beside the page, no console errors, no request beyond file://), that hovering a node
with the mouse shows its newcomer features and their explanation, that every edge
answers hover a quarter of the way along it (crossing edges too), that tooltips are
short and a click pins the full list, that a ``<script>`` token shows as text and never
runs, and that zooming works. Screenshots go to ``test-artifacts/``.

Without Chromium the tests skip, except where the browser is required — under
``scripts/test.sh`` (which installs it and sets ``TRAJECTORY_REQUIRE_BROWSER=1``) and in
CI (``CI=true``) — where they fail.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trajectory.render import evolution_plot_html, render_html

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
XSS = "<script>alert(1)</script>"
EXPLANATION = "mentions of darkness & lights " + XSS


def _missing(reason: str):
    if os.environ.get("CI") == "true" or os.environ.get("TRAJECTORY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; CI must run the browser tests (install Debian's `chromium` package: "
                    "apt-get install chromium)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A page that records page errors, dialogs and every request it makes."""

    def __init__(self, browser, path: Path):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("dialog", self._dialog)

        def route(r):
            self.requests.append(r.request.url)
            r.continue_() if r.request.url.startswith("file://") else r.abort()

        self.page.route("**/*", route)
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector(".main-svg", timeout=30_000)

    def _dialog(self, d):
        self.dialogs.append(d.message)
        d.dismiss()

    def point_xy(self, div_id: str, x: float, y: float) -> tuple[float, float]:
        """Page pixel position of data point (x, y), from plotly's own axis conversion."""
        return tuple(self.page.evaluate(
            """([id, x, y]) => { const gd = document.getElementById(id), fl = gd._fullLayout;
                 const r = gd.getBoundingClientRect();
                 const X = fl.xaxis, Y = fl.yaxis;  // d2l: data -> linear (log10 on a log axis)
                 return [r.left + fl._size.l + X.l2p(X.d2l(x)), r.top + fl._size.t + Y.l2p(Y.d2l(y))]; }""",
            [div_id, x, y]))

    def hover_text(self, div_id: str, x: float, y: float) -> str:
        self.page.mouse.move(0, 0)
        self.page.mouse.move(*self.point_xy(div_id, x, y))
        self.page.wait_for_selector(".hoverlayer .hovertext", timeout=5_000)
        return self.page.locator(".hoverlayer .hovertext").first.text_content()

    def assert_clean(self):
        assert self.errors == []
        assert self.dialogs == [], "a script from the data ran"
        assert self.requests and all(u.startswith("file://") for u in self.requests), self.requests
        # nothing from the data became a script element
        assert self.page.evaluate(
            "() => [...document.querySelectorAll('script')].filter(s => s.textContent.includes('alert(1)') "
            "&& !s.textContent.includes('Plotly.newPlot')).length") == 0


def graph_with_xss():
    import networkx as nx

    tokens = ["<bos>", "The", " dark", XSS, " room", " Mark"]
    g = nx.DiGraph(kind="trajectory", tokens=tokens, model_name="tiny-model", preset="offline", k=400, T=22,
                   through="attention", include_bos=False, layers=[0, 1, 2])

    def node(t, L):
        if (t, L) not in g:
            g.add_node((t, L), token_index=t, layer=L, token=tokens[t], is_bos=False, newcomers=[],
                       mlp_newcomers=[], n_newcomers=0)

    for t, q, L, feats in [(1, 3, 1, [(77, 1, 5.5)]), (2, 3, 1, [(78, 12, 2.0)]), (3, 5, 2, [(79, 4, 3.25)]),
                           (1, 2, 0, [(80, 20, 0.5)])]:
        node(t, L - 1)
        node(q, L)
        fl = [dict(feature=f, rank=r, activation=a, first_step=t + 1, explanation=EXPLANATION) for f, r, a in feats]
        g.add_edge((t, L - 1), (q, L), layer=L, source_token=t, target_token=q, prefix_length=q + 1,
                   num_trajectories=len(fl), best_rank=min(f["rank"] for f in fl), features=fl)
        g.nodes[(q, L)]["newcomers"] += [dict(f, source_token=t) for f in fl]
        g.nodes[(q, L)]["n_newcomers"] = len(g.nodes[(q, L)]["newcomers"])
    return g


def test_graph_html_in_chromium(browser, tmp_path, artifacts_dir):
    g = graph_with_xss()
    path = render_html(g, tmp_path / "graph.html", plotly_js="directory")
    p = Page(browser, path)
    page = p.page
    # offline: plotly.js came from the shared copy beside the page, and nothing else was asked for
    assert (tmp_path / "plotly.min.js").as_uri() in p.requests
    assert page.locator(".main-svg").count() >= 1
    assert page.locator(".scatterlayer .trace").count() >= 3  # edge lines, edge hover points, nodes
    # the data plotly holds: node hover carries the explanation (escaped)
    data = page.evaluate("() => document.getElementById('trajectory-graph').data.map("
                         "t => ({name: t.name, x: t.x, y: t.y, hovertext: t.hovertext}))")
    nodes = next(t for t in data if t["name"] == "nodes")
    i = next(i for i, (x, y) in enumerate(zip(nodes["x"], nodes["y"])) if (x, y) == (3, 2))  # node (3, L1): row 2
    assert "mentions of darkness &amp; lights &lt;script&gt;" in nodes["hovertext"][i]

    # a real mouse hover over node (3, L1) shows the features and the explanation as text
    text = p.hover_text("trajectory-graph", 3, 2)
    assert "feature 77" in text and "feature 78" in text and "from key 1" in text
    assert EXPLANATION in text, text  # '&' and the <script> tag shown literally, not run
    assert "'" + XSS + "'" in text and "L1" in text
    page.screenshot(path=str(artifacts_dir / "trajectory_graph_hover.png"), full_page=True)

    # hovering the middle of edge (3, L1) -> (5, L2) names the edge and its feature
    text = p.hover_text("trajectory-graph", 4, 2.5)
    assert "L2 attention" in text and "feature 79" in text and "best final rank 4" in text
    # a click pins the edge's full text, explanation whole and escaped, in the side panel
    page.mouse.click(*p.point_xy("trajectory-graph", 4, 2.5))
    panel = page.locator("#point-panel")
    panel.wait_for(state="visible", timeout=5_000)
    assert "feature 79" in panel.text_content() and EXPLANATION in panel.text_content()

    # the x axis shows the <script> token as text
    ticks = page.locator(".xtick text").all_text_contents()
    assert any(t.startswith("<script>alert(1)") for t in ticks), ticks

    # zoom: a drag box on the plot narrows the x range
    before = page.evaluate("() => document.getElementById('trajectory-graph')._fullLayout.xaxis.range.slice()")
    x0, y0 = p.point_xy("trajectory-graph", 1.5, 0.5)
    x1, y1 = p.point_xy("trajectory-graph", 3.5, 2.5)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.wait_for_timeout(300)
    after = page.evaluate("() => document.getElementById('trajectory-graph')._fullLayout.xaxis.range.slice()")
    assert after[1] - after[0] < (before[1] - before[0]) * 0.7, (before, after)
    p.assert_clean()
    page.close()


def test_evolution_html_in_chromium(browser, tmp_path, artifacts_dir):
    from trajectory.evolution.result import Evolution

    tokens = ["<bos>", "The", XSS, " room"]
    lists = {(n, 0): [([9, 1], [2.0, 1.0])] * (n + 2) for n in (2, 3)}
    lists[(4, 0)] = [([9, 1, 5], [3, 2, 1]), ([9, 1, 5], [3, 2, 1]), ([9, 7, 1], [3, 2, 1]),
                     ([7, 9, 1], [3, 2, 1]), ([7, 9, 5], [3, 2, 1]), ([7, 5, 9], [3, 2, 1])]
    evo = Evolution.from_lists(tokens, lists, k=3, model_name="tiny-model")
    # '%{y}' in an explanation must show as text, not as plotly's hover-template placeholder
    path = evolution_plot_html(evo, 0, 4, tmp_path / "evo.html", T=2, newcomers=[7],
                               explanations={7: EXPLANATION + " 100%{y}"})
    p = Page(browser, path)
    assert p.page.locator(".main-svg").count() >= 1
    # feature 7 is rank 1 at step 3 (key 2): hover it
    text = p.hover_text("evolution-plot", 3, 1)
    assert "feature 7 (newcomer)" in text and EXPLANATION + " 100%{y}" in text and "key 2 '" + XSS + "'" in text
    assert "rank 1 · act 3" in text
    p.page.screenshot(path=str(artifacts_dir / "evolution_plot_hover.png"), full_page=True)
    p.assert_clean()
    p.page.close()


def test_every_edge_answers_hover_along_it_and_tooltips_stay_small(browser, tmp_path, artifacts_dir):
    from tests.render.test_figures import crossing_graph

    g = crossing_graph()  # (1, L0) -> (4, L1) and (2, L0) -> (3, L1): their midpoints coincide
    p = Page(browser, render_html(g, tmp_path / "graph.html"))
    rows = {0: 1, 1: 2}  # emb is row 0
    for (u, v), mine, other in ((((1, 0), (4, 1)), "key 1 ", "key 2 "), (((2, 0), (3, 1)), "key 2 ", "key 1 ")):
        (x0, y0), (x1, y1) = p.point_xy("trajectory-graph", u[0], rows[u[1]]), \
            p.point_xy("trajectory-graph", v[0], rows[v[1]])
        # a quarter of the way along the edge (and at 0.63, between any two tenths), in screen pixels
        for f in (0.25, 0.63):
            p.page.mouse.move(0, 0)
            p.page.mouse.move(x0 + f * (x1 - x0), y0 + f * (y1 - y0))
            p.page.wait_for_selector(".hoverlayer .hovertext", timeout=5_000)
            text = p.page.locator(".hoverlayer .hovertext").first.text_content()
            assert "L1 attention" in text and mine in text and other not in text, (u, v, f, text)
    # at the common midpoint the tooltip names both
    text = p.hover_text("trajectory-graph", 2.5, 1.5)
    assert "2 edges cross here" in text and "key 1 " in text and "key 2 " in text

    # the node with 15 features: five in the tooltip, a box far smaller than the 424 x 504 px of old
    text = p.hover_text("trajectory-graph", 4, 2)
    assert [f for f in range(1000, 1015) if f"feature {f} " in text] == [1000, 1001, 1002, 1003, 1004]
    assert "and 10 more" in text
    box = p.page.locator(".hoverlayer .hovertext").first.bounding_box()
    assert box["height"] < 280, box
    p.page.screenshot(path=str(artifacts_dir / "trajectory_graph_capped_tooltip.png"))
    # a click pins all 15 in the side panel; the close button hides it
    p.page.mouse.click(*p.point_xy("trajectory-graph", 4, 2))
    panel = p.page.locator("#point-panel")
    panel.wait_for(state="visible", timeout=5_000)
    shown = panel.text_content()
    assert all(f"feature {f} " in shown for f in range(1000, 1015)) and "explanation number 14" in shown
    p.page.screenshot(path=str(artifacts_dir / "trajectory_graph_side_panel.png"))
    p.page.click("#point-panel-close")
    panel.wait_for(state="hidden", timeout=5_000)
    p.assert_clean()
    p.page.close()
