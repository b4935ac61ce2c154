"""Quality of trained SAEs on held-out text: L0, explained variance, dead features, spliced loss.

:func:`evaluate_sae` measures reconstruction on stored activations; :func:`hook_losses`
measures what the model loses when one layer's hook (any hook, ``attn.hook_z``
included) is replaced by its SAE reconstruction, beside the clean and zero-ablated
losses; :func:`meets_targets` checks one layer against :data:`TARGETS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template, layer_of
from trajectory.training.config import TARGETS

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = ["TARGETS", "HookLosses", "evaluate_sae", "hook_losses", "meets_targets", "spliced_losses"]


def meets_targets(m: Mapping[str, Any], targets: Mapping[str, float] = TARGETS) -> bool:
    """Whether one layer's metrics meet ``targets`` (explained variance, L0, dead features)."""
    return (
        m["explained_variance"] >= targets["explained_variance_min"]
        and m["l0"] <= targets["l0_max"]
        and m["dead_fraction"] <= targets["dead_fraction_max"]
    )


def evaluate_sae(sae: "SAE", acts: Any, batch_size: int = 4096) -> dict[str, float]:
    """Reconstruction metrics of ``sae`` on ``acts``.

    Args:
        sae: a sae-lens SAE.
        acts: ``[N, d_in]`` raw activations (held-out): a torch tensor, numpy array or
            memmap (read in blocks).

    Returns:
        ``l0`` (mean active features per token), ``explained_variance``
        (``1 - SSE / SST`` with SST about the per-dimension mean), ``dead_fraction``
        (features never active on ``acts``).
    """
    import torch

    from trajectory.training.sae import row_stats, rows

    n = acts.shape[0]
    mean, _ = row_stats(acts)
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x = rows(acts, start=start, stop=start + batch_size)
            f = sae.encode(x)
            recon = sae.decode(f)
            sse += float(((recon - x) ** 2).sum())
            sst += float(((x - mean) ** 2).sum())
            active = f != 0
            l0 += float(active.sum())
            fired |= active.any(dim=0)
    return {
        "l0": l0 / n,
        "explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"),
        "dead_fraction": float((~fired).float().mean()),
    }


@dataclass
class HookLosses:
    """Mean next-token cross-entropy of held-out chunks: ``clean``; per layer with the
    hook's activation replaced by the SAE reconstruction (``spliced``) and by zeros
    (``zero_ablated``), at every non-BOS position."""

    clean: float
    spliced: dict[int, float]
    zero_ablated: dict[int, float]


def hook_losses(
    model: "HookedTransformer",
    chunks: "torch.Tensor",
    saes: dict[int, "SAE"],
    *,
    hook_template: str = RESID_POST_TEMPLATE,
    batch_size: int = 8,
    progress: bool = True,
) -> HookLosses:
    """Model cross-entropy clean, with layer L's hook spliced by its SAE, and zero-ablated.

    One clean pass per batch caches ``resid_pre`` of every layer; each layer's spliced
    and zero-ablated losses re-run the model from block L (``start_at_layer``) with a
    hook that replaces the activation at the non-BOS positions. Activations of shape
    ``[b, pos, n_heads, d_head]`` (``attn.hook_z``) are flattened to ``n_heads * d_head``
    for the SAE and reshaped back. Every pass is unembedded by one
    :class:`~trajectory.model.unembed.Unembedding` (``W_U.T`` copied once, the
    cross-entropy built a block of rows at a time in one reused buffer): the same numbers
    as TransformerLens's ``return_type="loss"``; for the offline bank's 18 layers 139 s
    instead of 200 s, the rest being the unembedding matmuls themselves.

    Args:
        model: the model.
        chunks: ``[n, ctx]`` BOS-prefixed token ids (held-out).
        saes: layer -> SAE reading ``hook_template`` of that layer.
        hook_template: any hook with ``{layer}``.
        batch_size: chunks per forward pass.

    Returns:
        :class:`HookLosses` over all predicted positions of ``chunks``.
    """
    import torch
    from tqdm.auto import tqdm

    from trajectory.model.unembed import Unembedding

    hooks = {layer: hook_from_template(hook_template, layer) for layer in sorted(saes)}
    starts = {layer: f"blocks.{layer_of(hook)}.hook_resid_pre" for layer, hook in hooks.items()}
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    device = next(model.parameters()).device
    names = set(starts.values())
    unembed = Unembedding(model)
    n_layers = int(model.cfg.n_layers)
    clean_sum, count = 0.0, 0
    spliced = {layer: 0.0 for layer in hooks}
    zeroed = {layer: 0.0 for layer in hooks}
    n_batches = -(-len(chunks) // batch_size)
    bar = tqdm(total=n_batches * (1 + 2 * len(hooks)), desc="spliced CE loss", unit="pass", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size].to(device)
            final, cache = model.run_with_cache(batch, names_filter=lambda n: n in names, stop_at_layer=n_layers)
            clean_sum += float(unembed.next_token_nll(final, batch).sum())
            bar.update(1)
            mask = batch != bos if bos is not None else torch.ones_like(batch, dtype=torch.bool)
            for layer, hook in hooks.items():
                resid = cache[starts[layer]]
                for replace, sums in ((_sae_replacement(saes[layer]), spliced), (_zeros, zeroed)):
                    final = _run_with(model, batch, resid, layer_of(hook), hook, mask, replace)
                    sums[layer] += float(unembed.next_token_nll(final, batch).sum())
                    bar.update(1)
            count += batch.shape[0] * (batch.shape[1] - 1)
            del cache
    bar.close()
    return HookLosses(clean_sum / count, {x: s / count for x, s in spliced.items()},
                      {x: s / count for x, s in zeroed.items()})


def spliced_losses(model: "HookedTransformer", chunks: "torch.Tensor", saes: dict[int, "SAE"], *,
                   hook_template: str = RESID_POST_TEMPLATE, batch_size: int = 4,
                   progress: bool = True) -> tuple[float, dict[int, float]]:
    """``(clean_loss, {layer: spliced_loss})`` of :func:`hook_losses` (same arguments)."""
    losses = hook_losses(model, chunks, saes, hook_template=hook_template, batch_size=batch_size, progress=progress)
    return losses.clean, losses.spliced


def _sae_replacement(sae: "SAE"):
    def replace(x: "torch.Tensor") -> "torch.Tensor":  # [m, D] -> [m, D]
        return sae.decode(sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)))
    return replace


def _zeros(x: "torch.Tensor") -> "torch.Tensor":
    return x.new_zeros(x.shape)


def _run_with(model, batch, resid, block: int, hook: str, mask, replace) -> "torch.Tensor":
    """The residual after the last block (``[b, ctx, d_model]``) of ``batch`` run from block
    ``block`` on ``resid`` (its resid_pre) with ``hook``'s activation at the ``mask``
    positions replaced by ``replace(rows [m, D]) -> [m, D]`` (trailing dims flattened)."""

    def splice(act, hook=None):  # noqa: ARG001 - TransformerLens passes the hook point
        x = act[mask]  # [m, *trailing]
        out = act.clone()
        out[mask] = replace(x.reshape(x.shape[0], -1)).to(act.device, act.dtype).reshape(x.shape)
        return out

    return model.run_with_hooks(resid, start_at_layer=block, stop_at_layer=model.cfg.n_layers, tokens=batch,
                                fwd_hooks=[(hook, splice)])
