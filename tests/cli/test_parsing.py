"""Argument parsing of every sub-command: defaults, shared option names, aliases, no
abbreviations; and ``trajectory --help`` stays light."""
from __future__ import annotations

import subprocess
import sys

import pytest

from trajectory.cli import build_parser, main

COMMANDS = ["presets", "preload", "evolve", "graph", "real", "synthetic", "compare", "bench"]


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_every_command_is_registered(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command}" in text


@pytest.mark.parametrize("argv, expected", [
    (["preload"], dict(preset="offline", layers=None, dtype="float32", out=None, force=False, architecture="topk",
                       d_sae=None, k=None, hook_template="blocks.{layer}.hook_resid_post", no_progress=False)),
    (["preload", "--layers", "0-3", "--dtype", "bfloat16", "--out", "b", "--d-sae", "64", "--k", "8", "--epochs", "2"],
     dict(layers="0-3", dtype="bfloat16", out="b", d_sae=64, k=8, epochs=2.0)),
    (["evolve"], dict(preset="offline", prompt=None, prompt_file=None, k=400, layers=None, max_tokens=128,
                      postnorm="per_partial_sum", device=None, dtype=None, bank=None, out=None, method="auto",
                      batch_size=None, overwrite=False, max_rows=1000000, allow_other_model=False)),
    (["evolve", "--postnorm", "frozen_scale", "--dtype", "bfloat16", "--bank", "B", "--k", "7", "--method", "direct"],
     dict(postnorm="frozen_scale", dtype="bfloat16", bank="B", k=7, method="direct")),
    (["graph"], dict(file=None, evolution=None, T=22, through="attention", include_bos=False,
                     offline=False, bank=None, no_explanations=False, evolution_plots=True, out=None, name="graph")),
    (["graph", "e.safetensors", "--T", "13", "--through", "mlp", "--no-evolution-plots", "--formats", "png"],
     dict(file="e.safetensors", T=13, through="mlp", evolution_plots=False, formats="png")),
    (["graph", "--top-rank", "10"], dict(T=10)),
    (["real", "--features", "0-3", "--layer", "6"],
     dict(features="0-3", layer=6, preset="offline", max_examples=20, batch_size=16, context_length=128,
          max_tokens=None, include_bos=False, no_plots=False, out=None, analysis_mode="real")),
    (["real", "--features", "1", "--layer", "2", "--output", "o"], dict(out="o")),  # old spelling of --out
    (["real", "--features", "1", "--layer", "2", "--scan-tokens", "500", "--count-bos"],
     dict(max_tokens=500, include_bos=True)),
    (["real", "--features", "1", "--layer", "2", "--max-tokens", "500", "--include-bos"],  # old spellings
     dict(max_tokens=500, include_bos=True)),
    (["synthetic", "--features", "1", "--layer", "2", "--n-steps", "5", "--vocab-from-corpus", "default"],
     dict(n_steps=5, seq_len=8, learning_rate=0.1, restarts=3, seed=0, vocab_from_corpus="default",
          analysis_mode="synthetic")),
    (["compare", "--features", "1", "--layer", "2", "--real-report", "r.json"],
     dict(real_report="r.json", synthetic_report=None, analysis_mode="compare", n_steps=150, max_examples=20)),
    (["bench", "evolve", "--tiny", "--lengths", "8"], dict(target="evolve", options=["--tiny", "--lengths", "8"])),
])
def test_options(parser, argv, expected):
    args = parser.parse_args(argv)
    got = {key: getattr(args, key) for key in expected}
    assert got == expected


@pytest.mark.parametrize("argv", [
    ["graph", "--t", "10"],               # once taken as --through
    ["graph", "--top", "10"],
    ["evolve", "--pro", "x"],             # --prompt / --prompt-file
    ["preload", "--lay", "0"],
    ["real", "--features", "1", "--lay", "2"],
    ["synthetic", "--features", "1", "--n-st", "5"],
])
def test_no_abbreviations(parser, argv, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_bad_choices_name_the_option(parser, capsys):
    with pytest.raises(SystemExit):
        parser.parse_args(["evolve", "--postnorm", "none"])
    assert "--postnorm" in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "preload" in capsys.readouterr().out


def test_cli_help_is_fast_and_light():
    code = "import sys, trajectory.cli as c; c.build_parser(); print('torch' in sys.modules, 'sae_lens' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
