"""Issue 14's test "a graph made with --dashboard links to a card that exists", in
headless Chromium (Debian's package through Playwright, as in tests/render/test_browser.py).

A real dashboard of the tiny model's SAE bank (one pass over a few sentences) and a real
trajectory graph of a prompt on the same model and bank, one token and one explanation
made hostile; a click on a node pins its newcomers with links, following one opens the
dashboard page with that feature's card; no console error, no dialog, nothing but file://.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.render.test_browser import EXPLANATION, XSS, Page, browser  # noqa: F401 - browser: a fixture

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def linked_graph(tiny_model, tiny_bank, tmp_path_factory):
    """``(graph page, dashboard folder, graph)``: dashboard of every feature of every layer."""
    from trajectory.dashboard import DashboardConfig, DashboardTarget, collect, write_pages
    from trajectory.dashboard.build import target_name
    from trajectory.evolution.engine import evolve
    from trajectory.graph.build import trajectory_graph
    from trajectory.render import render_html
    from trajectory.testing import CORPUS_SENTENCES

    root = tmp_path_factory.mktemp("links")
    targets = [DashboardTarget(target_name(tiny_bank.hook_name(x)), tiny_bank[x], tiny_bank.hook_name(x), x)
               for x in tiny_bank.layers]
    cfg = DashboardConfig(context_length=12, batch_size=8, max_examples=3, sample_size=8, n_logits=3)
    write_pages(collect(tiny_model, targets, None, CORPUS_SENTENCES[:6], config=cfg, progress=False),
                root / "dashboard")
    evo = evolve(tiny_model, tiny_bank, "the dark room . mark gave the flashlight to", progress=False)
    g = trajectory_graph(evo, T=22)
    # the node with the most newcomers: its token and one feature's explanation made hostile
    node = max(g.nodes, key=lambda n: len(g.nodes[n].get("newcomers") or []))
    assert g.nodes[node]["newcomers"], "the test needs a node where newcomers arrive"
    g.graph["tokens"] = list(g.graph["tokens"])
    g.graph["tokens"][node[0]] = XSS
    g.nodes[node]["newcomers"][0]["explanation"] = EXPLANATION
    page = render_html(g, root / "run" / "graph" / "graph.html", dashboard=root / "dashboard")
    return page, root / "dashboard", g, node


def test_a_graph_made_with_a_dashboard_links_to_a_card_that_exists(browser, linked_graph, artifacts_dir):  # noqa: F811
    page_path, dash, g, node = linked_graph
    p = Page(browser, page_path)
    page = p.page
    # the node's plot position (plotly's own data: the "nodes" trace, in node order)
    xy = page.evaluate("""([t, L]) => { const tr = document.getElementById('trajectory-graph').data
                                          .find(d => d.name === 'nodes');
                                        const i = tr.meta.findIndex(m => m.includes('token ' + t + ' · L' + L + '<'));
                                        return [tr.x[i], tr.y[i]]; }""", [node[0], node[1]])
    page.mouse.click(*p.point_xy("trajectory-graph", *xy))
    panel = page.locator("#point-panel")
    panel.wait_for(state="visible", timeout=5_000)
    shown = panel.text_content()
    assert "'" + XSS + "'" in shown and EXPLANATION in shown  # hostile text shown as text
    links = panel.locator("a")
    newcomers = sorted(g.nodes[node]["newcomers"], key=lambda f: (f["rank"], f["feature"]))
    assert links.count() == len(newcomers)
    assert links.all_text_contents() == [f"feature {f['feature']}" for f in newcomers]
    first = newcomers[0]["feature"]
    href = links.first.get_attribute("href")
    assert href == f"../../dashboard/layer_{node[1]:02d}.html#f{first}"  # relative: the folders move together
    page.screenshot(path=str(artifacts_dir / "graph_panel_with_dashboard_links.png"))

    # follow it: the dashboard page of that layer opens with that feature's card
    links.first.click()
    page.wait_for_url(f"**/dashboard/layer_{node[1]:02d}.html#f{first}", timeout=10_000)
    card = page.locator("#card")
    page.wait_for_function(f"() => document.getElementById('card').dataset.feature === '{first}'", timeout=10_000)
    assert card.locator("h2").text_content() == f"feature {first}"
    assert "is not on this page" not in card.text_content()
    assert Path(page.url.split("#")[0].removeprefix("file://")) == (dash / f"layer_{node[1]:02d}.html").resolve()
    page.screenshot(path=str(artifacts_dir / "dashboard_card_from_graph_link.png"))
    p.assert_clean()
    page.close()
