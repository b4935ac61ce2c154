"""``trajectory graph`` end to end: every format, options, default output folder, errors,
and the stage script."""
from __future__ import annotations

import pytest

from trajectory.cli import main
from trajectory.graph.build import attach_explanations, trajectory_graph

from tests.graph.test_build import assert_same, make_evolution


def _strip_explanations(g):
    return attach_explanations(g, None)


def test_cli_writes_every_format(tmp_path, capsys):
    from trajectory.cli import main
    from trajectory.graph.export import read_graph

    evo = make_evolution()
    evo_path = evo.save(tmp_path / "evo.safetensors")
    out = tmp_path / "out"
    code = main(["graph", "--evolution", str(evo_path), "--offline", "--T", "5", "--out", str(out), "--evolution-plots"])
    assert code == 0
    printed = capsys.readouterr().out
    for fmt in ("png", "html", "graphml", "gexf", "json"):
        path = out / f"graph.{fmt}"
        assert path.is_file() and path.stat().st_size > 1000, fmt
        assert str(path) in printed
    assert (out / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<html" in (out / "graph.html").read_text(encoding="utf-8")[:2000].lower()
    assert sorted(p.name for p in (out / "evolution").iterdir()) == [
        "layer_00.html", "layer_00.png", "layer_01.html", "layer_01.png"]
    # one shared plotly.js for the whole folder; the evolution pages load the parent's copy
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.js")] == ["plotly.min.js"]
    assert 'src="../plotly.min.js"' in (out / "evolution" / "layer_01.html").read_text(encoding="utf-8")
    # whatever explanations were found, the graph is the Python API's graph
    expected = trajectory_graph(evo, T=5)
    for fmt in ("graphml", "gexf", "json"):
        assert_same(_strip_explanations(read_graph(out / f"graph.{fmt}")), expected)


def test_cli_options_and_default_out(tmp_path, capsys):
    from trajectory.cli import main
    from trajectory.graph.export import read_graph

    evo = make_evolution()
    evo_path = evo.save(tmp_path / "run" / "evo.safetensors")
    args = ["graph", "--evolution", str(evo_path), "--formats", "json, graphml", "--through", "mlp",
            "--include-bos", "--no-explanations", "--T", "4"]
    assert main(args) == 0
    out = tmp_path / "run" / "graph"  # default: beside the evolution file
    assert sorted(p.name for p in out.iterdir()) == ["graph.graphml", "graph.json"]
    assert_same(read_graph(out / "graph.json"), trajectory_graph(evo, T=4, through="mlp", include_bos=True))
    assert main(["graph", "--evolution", str(evo_path), "--formats", "svg"]) == 1
    assert "unknown output format" in capsys.readouterr().err
    assert main(["graph", "--evolution", str(tmp_path / "missing.safetensors")]) == 1
    assert "trajectory evolve" in capsys.readouterr().err


def test_graph_generator_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    evo_path = make_evolution().save(tmp_path / "evo.safetensors")
    script = Path(__file__).resolve().parents[2] / "scripts" / "graph_generator.py"
    res = subprocess.run([sys.executable, str(script), "--evolution", str(evo_path), "--formats", "gexf",
                          "--no-explanations", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "o" / "graph.gexf").is_file() and "graph.gexf" in res.stdout


def test_abbreviations_are_refused(tmp_path, capsys):
    """``--t 10`` must not silently become ``--through`` (argparse's prefix matching is off)."""
    evo_path = make_evolution().save(tmp_path / "evo.safetensors")
    import pytest

    with pytest.raises(SystemExit):
        main(["graph", "--evolution", str(evo_path), "--t", "10"])
    assert "unrecognized arguments: --t" in capsys.readouterr().err


def test_inline_pages_are_single_files(tmp_path):
    evo_path = make_evolution().save(tmp_path / "evo.safetensors")
    out = tmp_path / "out"
    assert main(["graph", str(evo_path), "--no-explanations", "--formats", "html", "--plotly-js", "inline",
                 "--out", str(out)]) == 0
    assert not list(out.rglob("*.js"))
    assert (out / "graph.html").stat().st_size > 3_000_000  # plotly.js inside


@pytest.mark.parametrize("through", ["attention", "mlp"])
def test_evolution_plots_get_the_full_prompt_and_the_options(tmp_path, monkeypatch, through):
    """The plots drawn are those of the full prompt (n = N) at every layer, with T and --through."""
    import trajectory.render as render

    calls = []
    for name in ("evolution_plot_png", "evolution_plot_html"):
        real = getattr(render, name)

        def record(evo, layer, n, path, *, _real=real, **options):
            calls.append((path.suffix, layer, n, options["T"], options["through"]))
            return _real(evo, layer, n, path, **options)

        monkeypatch.setattr(render, name, record)
    evo = make_evolution()
    evo_path = evo.save(tmp_path / "evo.safetensors")
    assert main(["graph", str(evo_path), "--no-explanations", "--formats", "png,html", "--top-rank", "4",
                 "--through", through, "--out", str(tmp_path / "o")]) == 0
    assert sorted(calls) == sorted((kind, layer, evo.n_tokens, 4, through)
                                   for layer in evo.layers for kind in (".png", ".html"))


def test_causal_edges_through_the_cli(tiny_preset, tiny_model, tiny_bank, tiny_bank_dir, tmp_path, capsys):
    """--causal annotates every edge with the knock-out figures edge_effects computes; --min-kl prunes."""
    from trajectory.evolution.engine import evolve
    from trajectory.graph.export import read_graph
    from trajectory.interventions.knockout import edge_effects
    from trajectory.saes.bank import SAEBank

    evo = evolve(tiny_model, SAEBank.open(tiny_bank_dir), "mark gave the flashlight to smith", k=16,
                 preset="offline", progress=False)
    path = evo.save(tmp_path / "evo.safetensors")
    out = tmp_path / "g"
    assert main(["graph", str(path), "--causal", "--top-rank", "6", "--no-explanations", "--formats", "json,html",
                 "--edge-width", "knockout_kl", "--no-evolution-plots", "--out", str(out)]) == 0
    g = read_graph(out / "graph.json")
    want = edge_effects(tiny_model, tiny_bank, evo, trajectory_graph(evo, T=6))
    assert g.number_of_edges() == want.number_of_edges() > 0
    for u, v, d in want.edges(data=True):
        assert g.edges[u, v]["knockout_kl"] == pytest.approx(d["knockout_kl"], rel=1e-4, abs=1e-7)
        assert g.edges[u, v]["newcomers_lost"] == d["newcomers_lost"]
    page = (out / "graph.html").read_text(encoding="utf-8")
    assert "knock-out of this key" in page and "edge width = knockout KL" in page
    cut = sorted(d["knockout_kl"] for *_, d in want.edges(data=True))[len(want.edges) // 2]
    assert main(["graph", str(path), "--causal", "--top-rank", "6", "--min-kl", str(cut), "--no-explanations",
                 "--formats", "json", "--no-evolution-plots", "--out", str(tmp_path / "h")]) == 0
    kept = read_graph(tmp_path / "h" / "graph.json")
    assert set(kept.edges) == {(u, v) for u, v, d in want.edges(data=True) if d["knockout_kl"] >= cut}
    assert main(["graph", str(path), "--min-kl", "0.1", "--out", str(tmp_path / "i")]) == 1
    assert "--min-kl needs --causal" in capsys.readouterr().err


def test_knockout_widths_follow_the_kl():
    """With edge_width = knockout_kl the drawn widths are proportional to each edge's KL."""
    import networkx as nx

    from trajectory.render.html import build_figure, edge_width

    g = nx.DiGraph(tokens=["<bos>", "a", "b", "c"], layers=[0, 1], T=5, edge_width="knockout_kl")
    for (t, q, kl) in [(1, 2, 0.5), (2, 3, 0.05), (1, 3, 0.0)]:
        g.add_edge((t, 0), (q, 1), layer=1, source_token=t, target_token=q, prefix_length=q + 1, num_trajectories=1,
                   best_rank=2, features=[], knockout_kl=kl)
    for n in g.nodes:
        g.nodes[n].update(token_index=n[0], layer=n[1], newcomers=[], n_newcomers=0)
    widths = sorted(round(t.line.width, 6) for t in build_figure(g).data
                    if t.mode == "lines" and t.x and t.x[0] is not None)
    assert widths == sorted(round(edge_width(kl, 0.5), 6) for kl in (0.5, 0.05, 0.0))


def test_dashboard_links_through_the_cli(tmp_path, capsys, caplog):
    """``--dashboard DIR``: the graph and evolution pages link feature ids to DIR's cards,
    relatively; a layer DIR has no page for is logged, named in the panels and not linked."""
    import logging
    import re

    from trajectory.dashboard import write_pages

    from tests.render.test_feature_links import small_dashboard

    evo = make_evolution()  # newcomers at layer 0 (200, 201, 300, 301, 400) and layer 1 (100-103, 500)
    evo_path = evo.save(tmp_path / "evo.safetensors")
    dash = tmp_path / "dashboard"
    write_pages([small_dashboard(1, [100, 101, 102, 103, 500, 600])], dash)  # no layer_00.html
    out = tmp_path / "graph"
    with caplog.at_level(logging.WARNING, logger="trajectory"):
        assert main(["graph", str(evo_path), "--no-explanations", "--formats", "html,json", "--top-rank", "5",
                     "--dashboard", str(dash), "--out", str(out)]) == 0
    assert "feature links to" in capsys.readouterr().out
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "no page for layer(s) 0 (layer_00.html)" in logged
    page = (out / "graph.html").read_text(encoding="utf-8")
    # (plotly's JSON writes "/" as \u002f) relative: from graph/ up to dashboard/
    linked = set(re.findall(r'\.\.\\u002fdashboard\\u002flayer_01\.html#f(\d+)', page))
    assert linked == {"100", "101", "102", "103"}  # every layer-1 newcomer of the graph (T=5), nothing else
    assert "layer_00.html#f" not in page and "no dashboard page layer_00.html" in page
    evo_page = (out / "evolution" / "layer_01.html").read_text(encoding="utf-8")
    assert re.search(r'\.\.\\u002f\.\.\\u002fdashboard\\u002flayer_01\.html#f100\b', evo_page)
    # a folder that is not there: a clear error before anything is written
    assert main(["graph", str(evo_path), "--no-explanations", "--dashboard", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "g2")]) == 1
    err = capsys.readouterr().err
    assert f"no feature dashboard at {tmp_path / 'nope'}" in err and "trajectory dashboard --layers" in err
    assert not list((tmp_path / "g2").glob("graph.*"))
