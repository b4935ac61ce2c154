"""The SAE bank: one sae-lens SAE per layer, with what later stages need to know.

A bank is the output of stage 1 and an input of stages 2 and 3. In memory it is a
mapping ``layer -> sae_lens.SAE``; each layer also records its hook name, source,
Neuronpedia id and quality metrics (:class:`BankEntry`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens import SAE


@dataclass
class BankEntry:
    """One layer of a bank.

    Attributes:
        layer: transformer block index.
        sae: the sae-lens SAE (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``).
        hook_name: TransformerLens hook the SAE reads, e.g. ``blocks.6.hook_resid_post``.
        source: where it came from (``"sae-lens:<release>/<id>"``, ``"folder:<path>"``,
            ``"trained:<corpus>"``, ``"npz:<path>"``, ``"memory"``).
        neuronpedia_id: ``"<model>/<source>"`` when Neuronpedia has this SAE, else ``None``.
        metrics: quality figures (L0, explained variance, ...) when known.
        explanations: feature index -> short text, for SAEs without Neuronpedia pages
            (locally trained ones: made from the feature's top-activating corpus tokens).
    """

    layer: int
    sae: "SAE"
    hook_name: str
    source: str = "memory"
    neuronpedia_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    explanations: dict[int, str] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def architecture(self) -> str:
        return str(self.sae.cfg.architecture())

    @property
    def dtype(self) -> str:
        return str(self.sae.W_enc.dtype).replace("torch.", "")


class SAEBank(Mapping):
    """A mapping ``layer -> SAE`` plus per-layer metadata.

    Example:
        >>> from trajectory.testing import tiny_model, tiny_bank
        >>> bank = tiny_bank(tiny_model())
        >>> bank.layers, bank.hook_name(0), bank[0].cfg.d_sae
        ([0, 1, 2], 'blocks.0.hook_resid_post', 64)
    """

    def __init__(
        self,
        entries: Mapping[int, BankEntry],
        *,
        model_name: str = "",
        preset: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.entries: dict[int, BankEntry] = {int(k): v for k, v in sorted(entries.items())}
        self.model_name = model_name
        self.preset = preset
        self.metadata = dict(metadata or {})

    @classmethod
    def from_saes(
        cls,
        saes: Mapping[int, "SAE"],
        *,
        hook_template: str = "blocks.{layer}.hook_resid_post",
        model_name: str = "",
        preset: str | None = None,
        source: str = "memory",
        neuronpedia_ids: Mapping[int, str] | None = None,
    ) -> "SAEBank":
        """Wrap already-built sae-lens SAEs."""
        entries = {
            int(layer): BankEntry(
                layer=int(layer),
                sae=sae,
                hook_name=hook_template.format(layer=layer),
                source=source,
                neuronpedia_id=(neuronpedia_ids or {}).get(layer),
            )
            for layer, sae in saes.items()
        }
        return cls(entries, model_name=model_name, preset=preset)

    # Mapping protocol: layer -> SAE
    def __getitem__(self, layer: int) -> "SAE":
        return self.entry(layer).sae

    def __iter__(self) -> Iterator[int]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, layer: int) -> BankEntry:
        try:
            return self.entries[int(layer)]
        except KeyError:
            raise KeyError(
                f"layer {layer} is not in this SAE bank (it has layers {self.layers}); "
                "preload it with `trajectory preload --layers ...`"
            ) from None

    @property
    def layers(self) -> list[int]:
        return list(self.entries)

    def hook_name(self, layer: int) -> str:
        return self.entry(layer).hook_name

    def neuronpedia_id(self, layer: int) -> str | None:
        return self.entry(layer).neuronpedia_id

    def __repr__(self) -> str:
        if not self.entries:
            return "SAEBank(empty)"
        e = next(iter(self.entries.values()))
        return (
            f"SAEBank(model={self.model_name!r}, preset={self.preset!r}, layers={self.layers}, "
            f"d_in={e.d_in}, d_sae={e.d_sae}, architecture={e.architecture!r}, dtype={e.dtype})"
        )
