"""``trajectory presets`` lists every preset with its model, layers and SAE source."""
from trajectory.cli import main
from trajectory.presets import DEFAULT_PRESET, PRESETS


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, preset in PRESETS.items():
        line = next(line for line in lines if line.startswith(name + " "))
        assert preset.model_name in line and f"layers={preset.n_layers}" in line
        assert (preset.sae_release in line) if preset.sae_release else ("trained locally" in line)
        assert line.endswith("(default)") == (name == DEFAULT_PRESET)
