"""Graph and evolution pages linking feature ids to dashboard cards: page names agree with
the dashboard's, links are relative (and still resolve to the page after URL parsing, with
odd folder names), missing pages and cards are logged and named instead of dangling, hostile
text stays text, and without a dashboard the pages are exactly as before."""
from __future__ import annotations

import logging
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from trajectory.dashboard import CardExample, FeatureCard, LayerDashboard, write_pages
from trajectory.render import evolution_plot_html, render_html
from trajectory.render.feature_links import DashboardLinks, dashboard_page, graph_feature_layers
from trajectory.render.html import GRAPH_DIV_ID, build_figure

from tests.render.test_browser import EXPLANATION, XSS, graph_with_xss


def small_dashboard(layer: int, features) -> LayerDashboard:
    """A real dashboard (the JSON and page format) of ``features`` at ``layer``; the card
    text is hostile too."""
    ex = CardExample(token_ids=[0, 1], activations=[0.0, 1.5], peak=1, activation=1.5)
    cards = [FeatureCard(feature=f, density=0.1, n_active=1, max_activation=1.5, mean_activation=0.1,
                         mean_active=1.5, examples=[ex], explanation=f"card {f} {XSS}") for f in features]
    from trajectory.dashboard.build import target_name

    return LayerDashboard(name=target_name(f"blocks.{layer}.hook_resid_post"), layer=layer,
                          hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny", sae={"d_sae": 1000},
                          corpus="x", n_tokens=10, features=cards, tokens={0: "<bos>", 1: XSS}, hist_edges=[])


def panel_texts(fig) -> list[str]:
    """Every click-panel text of a figure (node ``meta`` lists and edge ``meta`` strings)."""
    out = []
    for t in fig.data:
        meta = t.meta
        out += list(meta) if isinstance(meta, (list, tuple)) else ([meta] if isinstance(meta, str) else [])
    return out


class Markup(HTMLParser):
    """Tags and hrefs of renderer markup, parsed the way a browser's ``innerHTML`` would."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.hrefs: list[str] = []
        self.text = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.hrefs += [v for k, v in attrs if k == "href"]

    def handle_data(self, data):
        self.text += data


def test_page_names_are_the_dashboards():
    from trajectory.dashboard.build import target_name
    from trajectory.dashboard.page import page_name

    for layer in (0, 6, 17, 25):
        assert dashboard_page(layer) == page_name(small_dashboard(layer, [1])) == \
            target_name(f"blocks.{layer}.hook_resid_pre") + ".html"


def test_graph_feature_layers():
    g = graph_with_xss()
    assert graph_feature_layers(g) == {0: {80}, 1: {77, 78}, 2: {79}}


@pytest.mark.parametrize("dash_name", ["dashboard", "my dash #1 & <b>"])
def test_links_are_relative_and_resolve_to_the_card(tmp_path, dash_name, caplog):
    dash = tmp_path / "shared" / dash_name
    write_pages([small_dashboard(1, [77, 78]), small_dashboard(2, [79]), small_dashboard(0, [80])], dash)
    page = tmp_path / "runs" / "p1" / "graph" / "graph.html"
    g = graph_with_xss()
    with caplog.at_level(logging.WARNING, logger="trajectory"):
        render_html(g, page, dashboard=dash)
    assert not caplog.records  # every page and card is there
    links = DashboardLinks.open(dash, [0, 1, 2]).for_page(page)
    hrefs = [h for text in panel_texts(build_figure(g, links=links)) for h in Markup(text).hrefs]
    assert len(hrefs) == 2 * 4  # each feature in its node's panel and its edge's
    for h in hrefs:
        assert not urlparse(h).scheme and not h.startswith("/")  # relative: the folders move together
        # a browser resolves it against the page's URL: the dashboard page, fragment #f<id>
        url = urlparse(urljoin(page.as_uri(), h))
        target = Path(unquote(url.path))
        assert target.parent == dash.resolve() and target.is_file() and url.fragment in {"f77", "f78", "f79", "f80"}
        assert dashboard_page(int(target.stem.split("_")[1])) == target.name
    assert links.href(1, 77) == ("../../../shared/" + ("dashboard" if dash_name == "dashboard" else
                                                        "my%20dash%20%231%20%26%20%3Cb%3E") + "/layer_01.html#f77")
    # the written page carries them (escaped as an attribute inside plotly's JSON)
    assert "layer_01.html#f77" in page.read_text(encoding="utf-8")
    # the same folder: a bare page name
    assert DashboardLinks.open(dash, [1]).for_page(dash / "g.html").href(1, 78) == "layer_01.html#f78"


def test_missing_pages_and_cards_are_logged_and_named_not_linked(tmp_path, caplog):
    dash = tmp_path / "dash"
    write_pages([small_dashboard(1, [77])], dash)  # no layer 0 or 2 page; feature 78 not on layer 1's
    g = graph_with_xss()
    with caplog.at_level(logging.WARNING, logger="trajectory"):
        render_html(g, tmp_path / "graph.html", dashboard=dash)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "no page for layer(s) 0, 2" in logged and "layer_00.html" in logged and "layer_02.html" in logged
    assert "1 feature(s) are not on their dashboard page" in logged and "layer_01.html: 78" in logged
    links = DashboardLinks.open(dash, [0, 1, 2]).for_page(tmp_path / "graph.html")
    assert links.href(1, 77) == "dash/layer_01.html#f77"
    assert links.href(1, 78) is None and links.href(2, 79) is None and links.href(0, 80) is None
    texts = [Markup(t) for t in panel_texts(build_figure(g, links=links))]
    node_l2 = next(m for m in texts if "feature 79" in m.text and "key 3" in m.text and "L2" in m.text)
    assert not node_l2.hrefs and f"no dashboard page layer_02.html in {dash.resolve()}" in node_l2.text
    node_l1 = next(m for m in texts if "feature 77" in m.text and "feature 78" in m.text and "token 3" in m.text)
    assert node_l1.hrefs == ["dash/layer_01.html#f77"]
    assert "not on layer_01.html (the dashboard was built for other features): 78" in node_l1.text
    # the feature ids still read the same, link or not
    assert "#1 feature 77 · act 5.5" in node_l1.text and "#12 feature 78 · act 2" in node_l1.text


def test_hostile_text_stays_text_with_links(tmp_path):
    dash = tmp_path / "dash"
    write_pages([small_dashboard(1, [77, 78]), small_dashboard(2, [79]), small_dashboard(0, [80])], dash)
    g = graph_with_xss()
    links = DashboardLinks.open(dash, [0, 1, 2]).for_page(tmp_path / "graph.html")
    texts = panel_texts(build_figure(g, links=links))
    assert texts
    for text in texts:
        m = Markup(text)
        assert m.tags <= {"b", "br", "i", "a"}, m.tags  # only the renderer's own markup
        assert "<script" not in text and "onerror" not in text.replace("&", "")
    joined = " ".join(Markup(t).text for t in texts)
    assert EXPLANATION in joined and "'" + XSS + "'" in joined  # shown, as text


def test_without_a_dashboard_the_page_is_as_before(tmp_path):
    g = graph_with_xss()
    plain = build_figure(g)
    assert plain.to_json() == build_figure(g, links=None).to_json()
    assert not any("<a " in t for t in panel_texts(plain))
    # the panel texts with links differ only by the anchors around the feature ids
    dash = tmp_path / "dash"
    write_pages([small_dashboard(1, [77, 78]), small_dashboard(2, [79]), small_dashboard(0, [80])], dash)
    linked = build_figure(g, links=DashboardLinks.open(dash, [0, 1, 2]).for_page(tmp_path / "graph.html"))
    assert [Markup(t).text for t in panel_texts(linked)] == [Markup(t).text for t in panel_texts(plain)]
    # tooltips never carry links (they vanish when the mouse moves)
    assert [t.hovertext for t in linked.data] == [t.hovertext for t in plain.data]
    html = render_html(g, tmp_path / "plain.html").read_text(encoding="utf-8")
    assert "feature dashboard" not in html and GRAPH_DIV_ID in html


def test_bad_dashboard_folders(tmp_path):
    g = graph_with_xss()
    with pytest.raises(FileNotFoundError, match="no feature dashboard at .*trajectory dashboard"):
        render_html(g, tmp_path / "g.html", dashboard=tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        render_html(g, tmp_path / "g.html", dashboard=tmp_path / "file")
    assert not (tmp_path / "g.html").exists()  # nothing half-written


def test_evolution_plot_links_its_features(tmp_path):
    from tests.render.test_render import make_evolution

    dash = tmp_path / "dash"
    write_pages([small_dashboard(0, [7, 9])], dash)
    evo = make_evolution()
    path = evolution_plot_html(evo, 0, 4, tmp_path / "evolution" / "layer_00.html", T=3,
                               explanations={7: EXPLANATION}, dashboard=dash)
    html = path.read_text(encoding="utf-8")
    # (plotly's JSON writes "/" as \u002f: the hrefs themselves are checked on the figure below)
    assert re.search(r"layer_00\.html#f7\b", html) and re.search(r"layer_00\.html#f9\b", html)
    assert "layer_00.html#f11" not in html and "<script>alert" not in html
    from trajectory.render.evolution_plot import build_evolution_figure, rank_lines

    lines = rank_lines(evo, 0, 4, T=3, explanations={7: EXPLANATION})
    links = DashboardLinks.open(dash, [0]).for_page(path)
    metas = [(t.name, Markup(t.meta)) for t in build_evolution_figure(lines, links=links).data if t.meta]
    assert len(metas) == len(lines.features)  # one panel per drawn feature
    seven = next(m for name, m in metas if name.startswith("7 "))
    assert seven.hrefs == ["../dash/layer_00.html#f7"] and EXPLANATION in seven.text
    assert "feature 7 (newcomer) · final rank 2 · from key 1 'The'" in seven.text
    nine = next(m for _, m in metas if m.text.startswith("feature 9 "))
    assert nine.hrefs == ["../dash/layer_00.html#f9"] and "from key" not in nine.text  # there from the start
    (eleven,) = [m for _, m in metas if m.text.startswith("feature 11 ")]
    assert not eleven.hrefs and "not on layer_00.html (the dashboard was built for other features): 11" in eleven.text
    assert all(t.meta is None for t in build_evolution_figure(lines).data)  # no dashboard: as before
