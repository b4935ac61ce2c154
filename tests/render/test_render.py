"""Renderings of trajectory graphs and evolution plots (trajectory.render).

Graphs are built by hand here, following the schema of ``trajectory.graph``, so these
tests pin what the renderer reads. Pictures are checked as pictures (PIL): size,
not blank, and the colours that must be there (rank 1 red, rank T blue, newcomers in
colour). HTML is checked on the figure data plotly will draw, decoded from the page.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

PIL = pytest.importorskip("PIL.Image")

from trajectory.evolution.result import Evolution  # noqa: E402
from trajectory.render import (  # noqa: E402
    evolution_plot_html,
    evolution_plot_png,
    rank_lines,
    render_html,
    render_png,
)
from trajectory.render.png import figure_size, png_token_label  # noqa: E402
from trajectory.render.style import display_token, html_text, rank_colour  # noqa: E402

XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


# ----------------------------------------------------------------------------- builders
def make_graph(tokens, edges, *, T=22, layers=None, include_bos=False, through="attention"):
    """A trajectory graph per the schema. ``edges``: (t, q, L, [(feature, rank, act, explanation)])."""
    layers = layers if layers is not None else sorted({e[2] for e in edges}) or [0]
    g = nx.DiGraph(kind="trajectory", tokens=list(tokens), model_name="tiny-model", preset="offline", k=400, T=T,
                   through=through, include_bos=include_bos, layers=list(layers))

    def node(t, L):
        if (t, L) not in g:
            g.add_node((t, L), token_index=t, layer=L, token=tokens[t], is_bos=t == 0, newcomers=[],
                       mlp_newcomers=[], n_newcomers=0)

    for t, q, L, feats in edges:
        node(t, L - 1)
        node(q, L)
        fl = sorted(
            [dict(feature=f, rank=r, activation=a, first_step=t + 1, explanation=e) for f, r, a, e in feats],
            key=lambda d: d["rank"],
        )
        g.add_edge((t, L - 1), (q, L), layer=L, source_token=t, target_token=q, prefix_length=q + 1,
                   num_trajectories=len(fl), best_rank=fl[0]["rank"], features=fl)
        g.nodes[(q, L)]["newcomers"] += [dict(f, source_token=t) for f in fl]
        g.nodes[(q, L)]["n_newcomers"] = len(g.nodes[(q, L)]["newcomers"])
    return g


def small_graph(best_rank=None, expl="lights in a dark room"):
    tokens = ["<bos>", "The", " dark", " room", ".", " Mark", " gave"]
    edges = [
        (1, 2, 0, [(101, 3, 4.5, expl), (102, 9, 2.0, None)]),
        (2, 3, 1, [(201, 1, 7.25, expl)]),
        (3, 5, 2, [(301, 22, 1.5, expl), (302, 15, 1.0, "second")]),
        (5, 6, 2, [(401, 5, 3.0, expl)] * 1),
        (1, 6, 1, [(501, 12, 0.7, None), (502, 14, 0.6, None), (503, 20, 0.5, None)]),
    ]
    if best_rank is not None:  # every feature gets the same rank
        edges = [(t, q, L, [(f, best_rank, a, e) for f, _, a, e in fs]) for t, q, L, fs in edges]
    return make_graph(tokens, edges, layers=[0, 1, 2])


def random_graph(n_tokens, n_layers, n_edges, seed=0):
    rng = np.random.default_rng(seed)
    tokens = ["<bos>"] + [f" w{i}" for i in range(1, n_tokens)]
    edges = []
    for _ in range(n_edges):
        q = int(rng.integers(2, n_tokens))
        t = int(rng.integers(1, q + 1))
        L = int(rng.integers(0, n_layers))
        k = int(rng.integers(1, 5))
        edges.append((t, q, L, [(int(rng.integers(16384)), int(rng.integers(1, 23)), float(rng.random()), None)
                                for _ in range(k)]))
    return make_graph(tokens, edges, layers=list(range(n_layers)))


# ----------------------------------------------------------------------------- picture checks
def load_rgb(path: Path) -> np.ndarray:
    with PIL.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def non_white_fraction(rgb: np.ndarray) -> float:
    return float((rgb.min(axis=2) < 235).mean())


def reddish(rgb: np.ndarray) -> int:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 170) & (g < 110) & (b < 110)).sum())


def bluish(rgb: np.ndarray) -> int:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((b > 170) & (r < 120) & (g < 150)).sum())


# ----------------------------------------------------------------------------- display of tokens
def test_display_token_makes_invisible_characters_visible():
    assert display_token(" the") == "␣the"
    assert display_token("a\nb") == "a\\nb"
    assert display_token("\t") == "\\t"
    assert display_token("\x00x") == "\\x00x"
    assert display_token("zero\u200bwidth") == "zero\\u200bwidth"
    assert display_token("\ufeff") == "\\ufeff"
    assert display_token("nb\u00a0sp") == "nb\\xa0sp"
    assert display_token("  ") == "␣␣"
    assert display_token("") == "''"
    assert display_token("▁Mark") == "▁Mark"  # SentencePiece's own space mark stays
    assert display_token("x" * 50, max_len=10) == "x" * 9 + "…"
    assert display_token("字", renderable=lambda c: False) == "\\u5b57"
    assert display_token("😀", renderable=lambda c: False) == "\\U0001f600"


def test_prompt_text_for_titles():
    from trajectory.render.style import prompt_text

    assert prompt_text(["<bos>", "The", " dark", "\n", " room"]) == "The dark\\n room"
    assert prompt_text(["<bos>", "▁The", "▁dark"]) == "The dark"  # SentencePiece spaces
    assert prompt_text(["<bos>", "the", "dark"]) == "the dark"  # word-level tokens get spaces
    assert prompt_text([]) == ""


def test_png_token_label_escapes_glyphs_no_installed_font_has():
    from trajectory.render.png import _fonts

    _, chars = _fonts()
    assert ord("a") in chars
    # a private-use code point has no glyph in any normal font, so it must come out escaped
    assert png_token_label("\ue000") == "\\ue000"
    for ch in "字😀":
        assert png_token_label(ch) == (ch if ord(ch) in chars else display_token(ch, renderable=lambda c: False))


def test_html_text_escapes_markup():
    assert html_text(XSS) == XSS_ESCAPED
    assert html_text("a & b \"q\" 'q'") == "a &amp; b &#34;q&#34; &#x27;q&#x27;"


def test_rank_colours_run_red_to_blue():
    assert rank_colour(1, 22) == "#d7191c"
    assert rank_colour(22, 22) == "#2b5fd9"
    mid = rank_colour(11, 21)  # halfway: the purple stop
    assert mid == "#8e3bb8"


# ----------------------------------------------------------------------------- PNG
def test_png_is_a_real_picture(tmp_path):
    path = render_png(small_graph(), tmp_path / "g.png", dpi=100)
    assert path == tmp_path / "g.png" and path.is_file()
    rgb = load_rgb(path)
    h, w, _ = rgb.shape
    assert w >= 8 * 100 and h >= 5 * 100
    assert (w, h) == tuple(round(s * 100) for s in figure_size(6, 4))  # 6 token columns (no BOS), rows emb..L2
    assert non_white_fraction(rgb) > 0.01
    assert rgb.reshape(-1, 3).std(axis=0).max() > 20
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]  # atomic write leaves no temporary file


def test_png_edge_colour_follows_best_rank(tmp_path):
    """Rank-1 edges are drawn red and rank-T edges blue (colour bar excluded from the count)."""
    best = load_rgb(render_png(small_graph(best_rank=1), tmp_path / "best.png", dpi=80))
    worst = load_rgb(render_png(small_graph(best_rank=22), tmp_path / "worst.png", dpi=80))
    plot_best, plot_worst = best[:, : int(best.shape[1] * 0.75)], worst[:, : int(worst.shape[1] * 0.75)]
    assert reddish(plot_best) > 200 and bluish(plot_best) < reddish(plot_best) / 20
    assert bluish(plot_worst) > 200 and reddish(plot_worst) < bluish(plot_worst) / 20


def test_png_size_scales_with_prompt_and_dpi(tmp_path):
    big = random_graph(64, 18, 250)
    rgb = load_rgb(render_png(big, tmp_path / "big.png", dpi=60))
    h, w, _ = rgb.shape
    # readable: at least 0.35 in per token column and 0.3 in per layer row
    assert w >= 63 * 0.35 * 60 and h >= 19 * 0.3 * 60
    assert non_white_fraction(rgb) > 0.02
    half = load_rgb(render_png(big, tmp_path / "half.png", dpi=30))
    assert abs(half.shape[1] - w / 2) <= 1 and abs(half.shape[0] - h / 2) <= 1
    small = load_rgb(render_png(small_graph(), tmp_path / "small.png", dpi=60))
    assert small.shape[1] < w and small.shape[0] < h


@pytest.mark.parametrize("graph", ["bare", "tokens_only"])
def test_png_empty_graph_shows_a_message(tmp_path, graph):
    g = nx.DiGraph() if graph == "bare" else make_graph(["<bos>", "a", "b", "c"], [], layers=[0, 1])
    rgb = load_rgb(render_png(g, tmp_path / "empty.png", dpi=80))
    assert rgb.shape[0] >= 5 * 80
    assert non_white_fraction(rgb) > 0.005  # axes, message box and its text
    assert reddish(rgb) == 0 and bluish(rgb) == 0  # no edges, no colour bar


def test_png_survives_any_unicode_and_mathtext(tmp_path, recwarn):
    tokens = ["<bos>", "$x^2$", "\n", "\x00\x1b", "字", "😀", "שלום", "Ελλάδα", "\u200b", "▁the", "a$b", "\\", XSS]
    edges = [(i, i + 1, 1, [(i, 2, 1.0, "$\\frac{1}{0}$")]) for i in range(1, len(tokens) - 1)]
    g = make_graph(tokens, edges, layers=[0, 1])
    rgb = load_rgb(render_png(g, tmp_path / "u.png", title="$\\badmath{", dpi=60))
    assert non_white_fraction(rgb) > 0.01
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


# ----------------------------------------------------------------------------- HTML
def plotly_call(page: str, div_id: str) -> tuple[list, dict]:
    """Decode the ``data`` and ``layout`` JSON that the page hands to ``Plotly.newPlot``."""
    m = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert m, "no Plotly.newPlot call for the graph div"
    dec = json.JSONDecoder()
    data, end = dec.raw_decode(page, m.end())
    rest = page[end:].lstrip()
    assert rest.startswith(",")
    layout, _ = dec.raw_decode(rest[1:].lstrip())
    return data, layout


def all_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_strings(v)


def assert_plotly_inlined(page: str):
    assert len(page) > 3_000_000, "plotly.js (several MB) must be inlined"
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I), "external script found"
    assert not re.search(r"<link[^>]*\bhref\s*=", page, flags=re.I), "external stylesheet found"
    assert "cdn.plot.ly" not in page.split("Plotly.newPlot")[-1]


def test_html_is_self_contained_and_escapes_everything(tmp_path):
    tokens = ["<bos>", "The", XSS, " room", "<b>bold</b>"]
    edges = [
        (1, 2, 0, [(11, 2, 3.5, "fires on " + XSS + " & <img src=x onerror=alert(2)>")]),
        (2, 4, 1, [(12, 1, 1.25, "html " + XSS)]),
    ]
    g = make_graph(tokens, edges, layers=[0, 1])
    path = render_html(g, tmp_path / "g.html", title="title " + XSS, plotly_js="inline")
    page = path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["g.html"]
    assert_plotly_inlined(page)
    assert XSS not in page and "<img src=x" not in page
    data, layout = plotly_call(page, "trajectory-graph")
    strings = list(all_strings(data)) + list(all_strings(layout))
    # what plotly draws never holds markup from outside, only its escaped form
    assert not [s for s in strings if "<script" in s or "<img" in s or "<b>bold" in s]
    assert any(s.startswith("&lt;script&gt;alert(1)&lt;/") for s in layout["xaxis"]["ticktext"])  # cut to 20 chars
    assert any("&lt;b&gt;bold&lt;/b&gt;" in s for s in layout["xaxis"]["ticktext"])
    assert XSS_ESCAPED in layout["title"]["text"]
    hover = hover_texts(data)
    assert any("fires on " + XSS_ESCAPED + " &amp; &lt;img src=x onerror=alert(2)&gt;" in s for s in hover)
    # the click panel's texts (trace meta) are escaped the same way
    panels = [m for t in data for m in ([t["meta"]] if isinstance(t.get("meta"), str) else t.get("meta") or [])]
    assert any("fires on " + XSS_ESCAPED + " &amp; &lt;img src=x" in m for m in panels)
    # the page <title> is escaped too
    assert "<title>title " + XSS_ESCAPED + "</title>" in page


def hover_texts(data: list) -> list[str]:
    """Every tooltip of a figure: a trace's ``hovertext`` is one string for all its points or one per point."""
    out = []
    for t in data:
        h = t.get("hovertext")
        out += [h] if isinstance(h, str) else [x for x in h or [] if x]
    return out


def edge_hover_points(data: list) -> list[tuple[float, float, str]]:
    """``(x, y, tooltip)`` of every invisible edge hover point."""
    return [(x, y, t["hovertext"]) for t in data if str(t.get("name", "")).startswith("edge ")
            for x, y in zip(t["x"], t["y"])]


def on_segment(p, a, b, eps=1e-3) -> float | None:
    """Fraction of the way from ``a`` to ``b`` at which point ``p`` lies, or None if off the segment."""
    (x, y), (x0, y0), (x1, y1) = p, a, b
    if abs((x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)) > eps:
        return None
    f = ((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2)
    return f if -eps <= f <= 1 + eps else None


def test_html_hover_holds_token_layer_and_newcomers(tmp_path):
    g = small_graph()
    data, layout = plotly_call(render_html(g, tmp_path / "g.html").read_text(encoding="utf-8"), "trajectory-graph")
    by_name = {t.get("name"): t for t in data}
    nodes = by_name["nodes"]
    assert len(nodes["x"]) == g.number_of_nodes()
    # the node (3, 2) receives features 301 (rank 22) and 302 (rank 15) from key 3 ' room'
    rows = {L: i for i, L in enumerate([-1, 0, 1, 2])}
    i = next(i for i, (x, y) in enumerate(zip(nodes["x"], nodes["y"])) if (x, y) == (5, rows[2]))
    text = nodes["hovertext"][i]
    assert "&#x27; Mark&#x27;" not in text  # tokens are shown with visible spaces
    assert "␣Mark" in text and "L2" in text and "2 newcomer features" in text
    assert "#15 feature 302 · act 1 · from key 3" in text and "#22 feature 301 · act 1.5" in text
    assert text.index("feature 302") < text.index("feature 301")  # sorted by final rank
    assert "second" in text and "lights in a dark room" in text
    # invisible hover points all along every edge (its midpoint too), naming its features
    points = edge_hover_points(data)
    for u, v, d in g.edges(data=True):
        a, b = (u[0], rows[u[1]]), (v[0], rows[v[1]])
        mine = sorted((f, h) for x, y, h in points if (f := on_segment((x, y), a, b)) is not None
                      and f"key {u[0]} " in h and f"query {v[0]} " in h)
        fractions = [0.0] + [f for f, _ in mine] + [1.0]
        gaps = [f1 - f0 for f0, f1 in zip(fractions, fractions[1:])]
        # evenly spread over the whole edge (how close on screen: tests/render/test_browser.py)
        assert len(mine) >= 9 and max(gaps) - min(gaps) < 1e-3 and max(gaps) <= 0.1 + 1e-3, (u, v, fractions)
        assert any(abs(f - 0.5) < 1e-9 for f, _ in mine), f"no hover point at the midpoint of {u}->{v}"
        for _, h in mine:
            assert f"best final rank {d['best_rank']}" in h
            assert all(f"feature {f['feature']}" in h for f in d["features"]) or "edges cross here" in h
    assert all(t["marker"]["opacity"] == 0 for t in data if str(t.get("name", "")).startswith("edge "))
    assert layout["yaxis"]["ticktext"] == ["emb", "L0", "L1", "L2"]


def test_html_empty_graph(tmp_path):
    page = render_html(nx.DiGraph(), tmp_path / "e.html").read_text(encoding="utf-8")
    data, layout = plotly_call(page, "trajectory-graph")
    assert data == []
    assert "no newcomer trajectories" in layout["annotations"][0]["text"]


def test_render_imports_no_torch():
    import subprocess

    code = ("import sys, trajectory.render as r, networkx as nx, tempfile, os; "
            "d = tempfile.mkdtemp(); r.render_png(nx.DiGraph(), os.path.join(d, 'a.png')); "
            "r.render_html(nx.DiGraph(), os.path.join(d, 'a.html')); "
            "print(sorted(m for m in ('torch', 'sae_lens', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- evolution plots
EVO_TOKENS = ["<bos>", "The", XSS, " room"]  # N = 4: prefix lengths 2..4


def make_evolution() -> Evolution:
    """Hand-made evolution; layer 0, prefix n = 4 has steps: initial, key 0..3, mlp.

    At n = 4 with T = 3:
      7  enters at key 1, rank 2 at the last attention step            -> newcomer
      9  present from the start                                         -> not a newcomer
      11 enters at key 0 and leaves at key 3                            -> not a newcomer
      13 enters at key 2, final rank 4 > T                              -> not a newcomer
      21 only at the mlp step, rank 1                                   -> newcomer only through the MLP
      3  rank exactly T at the last attention step, entered at key 3    -> newcomer
         (rank 4 at the mlp step: not a newcomer through the MLP)
      40 below rank 5 everywhere (rank 6)                               -> drawn only when top >= 6
    """
    def steps_for(n):
        if n != 4:
            return [([9, 1], [2.0, 1.0])] * (n + 2)
        return [
            ([9, 1, 5, 6, 8, 40], [9, 8, 7, 6, 5, 4]),            # initial
            ([9, 11, 1, 5, 6, 40], [9, 8, 7, 6, 5, 4]),           # key 0
            ([9, 7, 11, 1, 5, 40], [9, 8, 7, 6, 5, 4]),           # key 1
            ([9, 7, 11, 13, 1, 40], [9, 8, 7, 6, 5, 4]),          # key 2
            ([9, 7, 3, 13, 1, 40], [9, 8, 7, 6, 5, 4]),           # key 3 = last attention
            ([21, 9, 7, 3, 13], [10, 9, 8, 7, 6]),                # mlp
        ]
    lists = {(n, 0): steps_for(n) for n in range(2, 5)}
    return Evolution.from_lists(EVO_TOKENS, lists, k=6, model_name="tiny-model")


def reference_newcomers(evo: Evolution, n: int, layer: int, T: int, through: str) -> set[int]:
    """Newcomers by the definition (MISSION stage 3), brute force over the step lists."""
    lists = [list(map(int, s)) for s in evo.step_lists(n, layer)]
    final = lists[n] if through == "attention" else lists[n + 1]
    return {f for f in final if f not in lists[0] and final.index(f) + 1 <= T}


def test_reference_newcomers_match_the_docstring():
    evo = make_evolution()
    assert reference_newcomers(evo, 4, 0, 3, "attention") == {7, 3}
    assert reference_newcomers(evo, 4, 0, 3, "mlp") == {21, 7}


def test_rank_lines_match_feature_ranks():
    evo = make_evolution()
    lines = rank_lines(evo, 0, 4, T=3, newcomers=[7, 3], top=5)
    assert lines.newcomers == [7, 3]  # by final rank
    assert lines.features[:2] == [7, 3]
    # drawn: every feature that reaches rank <= 5 somewhere (40 never does), newcomers always
    reach = {f for s in evo.step_lists(4, 0) for f in s[:5].tolist()}
    assert set(lines.features) == reach and 40 not in lines.features
    for i, f in enumerate(lines.features):
        expect = [np.nan if r is None else r for r in evo.feature_ranks(4, 0, f)]
        np.testing.assert_array_equal(lines.ranks[i], expect)
    assert 40 in rank_lines(evo, 0, 4, T=3, newcomers=[], top=6).features
    assert lines.first_step(lines.features.index(7)) == 2  # key 1
    assert rank_lines(evo, 0, 4, T=3, newcomers=[], through="mlp").final_step == 5
    with pytest.raises(ValueError, match="layer 5"):
        rank_lines(evo, 5, 4, newcomers=[])
    with pytest.raises(ValueError, match="prefix length 9"):
        rank_lines(evo, 0, 9, newcomers=[])


def test_rank_lines_use_find_newcomers_by_default():
    pytest.importorskip("trajectory.newcomers")
    evo = make_evolution()
    for through in ("attention", "mlp"):
        lines = rank_lines(evo, 0, 4, T=3, through=through)
        assert set(lines.newcomers) == reference_newcomers(evo, 4, 0, 3, through)


def test_evolution_png_highlights_newcomers(tmp_path):
    from trajectory.render.evolution_plot import _PALETTE

    evo = make_evolution()
    target = np.array([int(_PALETTE[0][i: i + 2], 16) for i in (1, 3, 5)])

    def palette0(rgb):
        return int((np.abs(rgb - target).sum(axis=2) < 30).sum())

    with_new = load_rgb(evolution_plot_png(evo, 0, 4, tmp_path / "e.png", T=3, newcomers=[7, 3], dpi=80))
    without = load_rgb(evolution_plot_png(evo, 0, 4, tmp_path / "f.png", T=3, newcomers=[], dpi=80))
    assert with_new.shape[1] >= 9 * 80 and non_white_fraction(with_new) > 0.01
    assert palette0(with_new) > 100 and palette0(without) == 0
    half = load_rgb(evolution_plot_png(evo, 0, 4, tmp_path / "g.png", T=3, newcomers=[7, 3], dpi=40))
    assert abs(half.shape[1] - with_new.shape[1] / 2) <= 1


def test_evolution_html_escapes_and_holds_explanations(tmp_path):
    evo = make_evolution()
    path = evolution_plot_html(evo, 0, 4, tmp_path / "e.html", T=3, newcomers=[7, 3],
                               explanations={7: "about " + XSS, 3: None})
    inline = evolution_plot_html(evo, 0, 4, tmp_path / "inline" / "e.html", T=3, newcomers=[7, 3],
                                 explanations={7: "about " + XSS, 3: None}, plotly_js="inline")
    page = path.read_text(encoding="utf-8")
    assert_plotly_inlined(inline.read_text(encoding="utf-8"))
    assert plotly_call(inline.read_text(encoding="utf-8"), "evolution-plot") == plotly_call(page, "evolution-plot")
    data, layout = plotly_call(page, "evolution-plot")
    strings = list(all_strings(data)) + list(all_strings(layout))
    assert not [s for s in strings if "<script" in s]
    assert "key 2 &#x27;&lt;script&gt;alert(1…&#x27;" in layout["xaxis"]["ticktext"]  # cut to 16 characters
    by_name = {t["name"].split(" ")[0]: t for t in data}
    assert set(by_name) == {"other", "7", "3"}
    # hover: one template per feature (with its explanation), filled per point with step, rank, activation
    assert "feature 7</b> (newcomer)" in by_name["7"]["hovertemplate"]
    assert "about " + XSS_ESCAPED in by_name["7"]["hovertemplate"]
    steps7 = [h for h in by_name["7"]["text"] if h]
    assert len(steps7) == 4  # present at 4 steps
    assert by_name["7"]["y"] == [None, None, 2.0, 2.0, 2.0, 3.0]
    assert [a for a in by_name["7"]["customdata"] if a is not None] == [8.0, 8.0, 8.0, 8.0]
    assert "key 2 &#x27;" + XSS_ESCAPED + "&#x27;" in by_name["7"]["text"][3]  # hover: the whole token


# ----------------------------------------------------------------------------- with trajectory.graph
def test_renders_graphs_built_by_trajectory_graph(tmp_path):
    """The renderers read what the graph builder writes (schema agreement)."""
    graph = pytest.importorskip("trajectory.graph.build")
    evo = make_evolution()
    for through in ("attention", "mlp"):
        g = graph.trajectory_graph(evo, T=3, through=through,
                                   explanations=lambda layer, f: f"explained {f} " + XSS)
        assert g.number_of_edges() >= 1
        rgb = load_rgb(render_png(g, tmp_path / f"{through}.png", dpi=60))
        plot = rgb[:, : int(rgb.shape[1] * 0.75)]  # without the colour bar
        assert non_white_fraction(rgb) > 0.01 and int(((plot.max(axis=2) - plot.min(axis=2)) > 80).sum()) > 100
        data, _ = plotly_call(render_html(g, tmp_path / f"{through}.html").read_text(encoding="utf-8"),
                              "trajectory-graph")
        nodes = next(t for t in data if t["name"] == "nodes")
        assert len(nodes["x"]) == g.number_of_nodes()
        hover = "\n".join(nodes["hovertext"])
        for _, d in g.nodes(data=True):
            for f in d["newcomers"] + d["mlp_newcomers"]:
                assert f"feature {f['feature']} · act" in hover
                assert f"explained {f['feature']} {XSS_ESCAPED}" in hover
        if through == "mlp":
            assert "through the MLP" in hover  # feature 21 arrives at the mlp step


@pytest.mark.parametrize("fmt", ["json", "graphml", "gexf"])
def test_renders_graphs_read_back_from_files(tmp_path, fmt):
    """A graph read back with trajectory.read_graph draws the same hover text as the original."""
    export = pytest.importorskip("trajectory.graph.export")
    g = small_graph(expl="about " + XSS)
    h = export.read_graph(export.export_graph(g, tmp_path / f"g.{fmt}"))
    original, _ = plotly_call(render_html(g, tmp_path / "a.html").read_text(encoding="utf-8"), "trajectory-graph")
    again, _ = plotly_call(render_html(h, tmp_path / "b.html").read_text(encoding="utf-8"), "trajectory-graph")
    assert again == original
    assert load_rgb(render_png(h, tmp_path / "b.png", dpi=50)).shape == load_rgb(
        render_png(g, tmp_path / "a.png", dpi=50)).shape
