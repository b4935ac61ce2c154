"""The stages as library calls (what the CLI runs): graph outputs, bank resolution, prompts."""
from __future__ import annotations

import pytest

from trajectory.pipeline import GraphConfig, open_bank, parse_formats, read_prompts, write_graph_outputs

from tests.graph.test_build import make_evolution


def test_failing_explanations_warn_and_render(tmp_path, monkeypatch):
    """A broken explanation source never stops the graph (fault injected via a module that raises)."""

    import trajectory.explanations.lookup as lookup

    def explain_features(evo, features, *, offline, bank_path=None, neuronpedia_url=None):
        raise ConnectionError("neuronpedia unreachable")

    monkeypatch.setattr(lookup, "explain_features", explain_features)
    result = write_graph_outputs(make_evolution(), tmp_path, GraphConfig(formats=["json"], T=5))
    assert result.explained == 0 and (tmp_path / "graph.json").is_file()
    assert any("neuronpedia unreachable" in w for w in result.warnings)

    monkeypatch.setattr(lookup, "explain_features",
                        lambda evo, features, *, offline, bank_path=None, neuronpedia_url=None: {(1, 100): "hundred", (0, 200): ""})
    result = write_graph_outputs(make_evolution(), tmp_path, GraphConfig(formats=["json"], T=5, offline=True))
    assert result.explained == 1
    assert result.graph.nodes[(3, 1)]["newcomers"][0]["explanation"] == "hundred"


def test_graph_stage_imports_no_torch(tmp_path):
    """Stage 3 works from saved files: building, exporting and rendering never import torch."""
    import subprocess
    import sys

    evo_path = make_evolution().save(tmp_path / "evo.safetensors")
    code = (
        "import sys\n"
        "from trajectory.evolution.result import Evolution\n"
        "from trajectory.pipeline import GraphConfig, write_graph_outputs\n"
        "import trajectory.graph.analysis\n"
        f"write_graph_outputs(Evolution.load({str(evo_path)!r}), {str(tmp_path / 'o')!r},"
        " GraphConfig(formats=['png', 'json'], explanations=False))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_parse_formats():
    assert parse_formats("png, JSON,.gexf,png") == ["png", "json", "gexf"]
    assert parse_formats(["html"]) == ["html"]
    with pytest.raises(ValueError, match="unknown output format.*svg"):
        parse_formats("png,svg")
    with pytest.raises(ValueError, match="unknown output format"):
        GraphConfig(formats="")


def test_missing_bank_says_run_preload(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `trajectory preload --preset offline` first"):
        open_bank("offline", tmp_path / "no-bank")


def test_read_prompts(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("  one \n\n two\n")
    assert read_prompts(path) == ["one", "two"]
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="no non-empty lines"):
        read_prompts(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_neuronpedia_url_reaches_explain_features(tmp_path, monkeypatch):
    import trajectory.explanations.lookup as lookup

    seen = []

    def explain_features(evo, features, *, offline, bank_path=None, neuronpedia_url=None):
        seen.append(neuronpedia_url)
        return {}

    monkeypatch.setattr(lookup, "explain_features", explain_features)
    write_graph_outputs(make_evolution(), tmp_path, GraphConfig(formats=["json"], T=5,
                                                                neuronpedia_url="http://127.0.0.1:9/np"))
    assert seen == ["http://127.0.0.1:9/np"]


def test_graph_config_dashboard_reaches_the_pages(tmp_path):
    """``GraphConfig.dashboard``: the HTML graph links its features; without an HTML format
    the folder is not needed (nothing links)."""
    from trajectory.dashboard import write_pages
    from trajectory.render.feature_links import graph_feature_layers

    from tests.render.test_feature_links import panel_texts, small_dashboard
    from trajectory.render.html import build_figure

    evo = make_evolution()
    dash = tmp_path / "dash"
    write_pages([small_dashboard(0, range(1000)), small_dashboard(1, range(1000))], dash)
    result = write_graph_outputs(evo, tmp_path / "g", GraphConfig(formats=["html"], T=5, explanations=False,
                                                                  dashboard=dash))
    page = result.paths["html"].read_text(encoding="utf-8")
    wanted = graph_feature_layers(result.graph)
    for layer, feats in wanted.items():
        for f in feats:
            assert f"layer_{layer:02d}.html#f{f}\\" in page  # each feature's link, in plotly's JSON
    assert all("<a " not in t for t in panel_texts(build_figure(result.graph)))  # the figure alone: no links
    # no html: the dashboard option is unused, even when the folder is missing
    write_graph_outputs(evo, tmp_path / "g2", GraphConfig(formats=["json"], T=5, explanations=False,
                                                          dashboard=tmp_path / "missing"))
