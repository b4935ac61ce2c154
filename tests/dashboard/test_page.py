"""The dashboard page: hostile text stays inert in the HTML, and in headless Chromium
(Debian's package through Playwright, as in tests/render/test_browser.py) the page loads
offline with no errors, lists features lazily, search and the density filter change the
visible rows, ``#f5`` opens feature 5, and a ``<script>`` / ``<img onerror>`` example
shows as text without running."""
from __future__ import annotations


from trajectory.dashboard import Band, CardExample, FeatureCard, LayerDashboard, write_pages

XSS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]
N = 250


def hostile_dashboard() -> LayerDashboard:
    """``N`` features; feature ``f`` has density ``f / 1000``; every 10th is about darkness;
    feature 5's examples and explanation carry script and image-tag text."""
    tokens = {0: "<bos>", 1: " dark", 2: XSS[0], 3: XSS[1], 4: "\nroom"}
    cards = []
    for f in range(N):
        ex = CardExample(token_ids=[0, 1, 2, 3, 4], activations=[0.0, 1.0, 2.5, 0.5, 0.0], peak=2, activation=2.5,
                         chunk=f, position=2)
        cards.append(FeatureCard(
            feature=f, density=f / 1000, n_active=f, max_activation=1.0 + f, mean_activation=0.1, mean_active=1.0,
            hist_start=80, histogram=[1, 3, 2], examples=[ex], bands=[Band(0.0, 1.25, []), Band(1.25, 2.5, [ex])],
            top_logits=[(XSS[1], 0.5)], bottom_logits=[(" light", -0.5)], neighbours=[((f + 1) % N, 0.25)],
            explanation=("darkness " + XSS[0]) if f % 10 == 5 else f"feature number {f}",
        ))
    return LayerDashboard(name="layer_06", hook_name="blocks.6.hook_resid_post", model_name="tiny</title>" + XSS[0],
                          sae={"d_in": 32, "d_sae": N}, corpus="x", n_tokens=1000, features=cards, tokens=tokens,
                          hist_edges=[10 ** (-4 + i / 20) for i in range(161)], layer=6)


def test_html_keeps_hostile_text_inert(tmp_path):
    write_pages([hostile_dashboard()], tmp_path)
    text = (tmp_path / "layer_06.html").read_text()
    for bad in XSS + ["</title><script>"]:
        assert bad not in text
    assert text.count("<script") == 3  # the two JSON blocks and the page's own script
    assert "tiny&lt;/title&gt;" in (tmp_path / "index.html").read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_in_chromium(tmp_path):
    from tests.render.test_browser import CHROMIUM_ARGS, CHROMIUM, _missing
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    write_pages([hostile_dashboard()], tmp_path)
    errors, dialogs, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.route("**/*", lambda r: (requests.append(r.request.url),
                                      r.continue_() if r.request.url.startswith("file://") else r.abort()))
        page.goto((tmp_path / "layer_06.html").as_uri() + "#f5")
        rows = page.locator("#list .row")
        assert rows.count() == 100  # lazily: the first hundred rows, not 250
        assert page.locator("#count").text_content() == f"{N} of {N} features"
        # #f5 opens feature 5's card; its hostile text is shown as text
        card = page.locator("#card")
        assert card.get_attribute("data-feature") == "5"
        shown = card.text_content()
        assert "feature 5" in shown and "darkness " + XSS[0] in shown and XSS[1] in shown
        assert page.locator("#card img").count() == 0 and page.locator("#card script").count() == 0
        assert page.locator("#card .tok.peak").first.text_content() == XSS[0]
        # search by explanation text, then by id
        page.fill("#q", "darkness")
        assert [int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.f)")] == list(range(5, N, 10))
        page.fill("#q", "#f42")
        assert rows.evaluate_all("rs => rs.map(r => r.dataset.f)") == ["42"]
        # the density filter: 0.1 <= density <= 0.12 is features 100-120
        page.fill("#q", "")
        page.fill("#dmin", "0.1")
        page.fill("#dmax", "0.12")
        assert [int(x) for x in rows.evaluate_all("rs => rs.map(r => r.dataset.f)")] == list(range(100, 121))
        # a neighbour link opens that feature's card
        page.click("#card a[href='#f6']")
        page.wait_for_function("document.getElementById('card').dataset.feature === '6'")
        browser.close()
    assert errors == [] and dialogs == [], (errors, dialogs)
    assert requests and all(u.startswith("file://") for u in requests), requests


def test_page_embeds_the_json_file(tmp_path):
    """The page's data block is the JSON file's object (one ``to_dict``: same ``created``)."""
    import json
    import re

    write_pages([hostile_dashboard()], tmp_path)
    page = (tmp_path / "layer_06.html").read_text()
    block = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    on_disk = json.loads((tmp_path / "layer_06.json").read_text())
    assert json.loads(block) == on_disk and on_disk["created"]
    assert LayerDashboard.load(tmp_path / "layer_06.json") == LayerDashboard.from_dict(json.loads(block))
    assert "function openCard(" in page and "function open(" not in page  # window.open not shadowed
