"""Quality of trained SAEs on held-out text: L0, explained variance, dead features, spliced loss.

:func:`evaluate_sae` measures reconstruction on stored activations; :func:`spliced_losses`
measures what the model loses when one layer's residual stream is replaced by its SAE
reconstruction; :func:`meets_targets` checks one layer against :data:`TARGETS`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template
from trajectory.training.config import TARGETS

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = ["TARGETS", "evaluate_sae", "meets_targets", "spliced_losses"]


def meets_targets(m: Mapping[str, Any], targets: Mapping[str, float] = TARGETS) -> bool:
    """Whether one layer's metrics meet ``targets`` (explained variance, L0, dead features)."""
    return (
        m["explained_variance"] >= targets["explained_variance_min"]
        and m["l0"] <= targets["l0_max"]
        and m["dead_fraction"] <= targets["dead_fraction_max"]
    )


def evaluate_sae(sae: "SAE", acts: "torch.Tensor", batch_size: int = 4096) -> dict[str, float]:
    """Reconstruction metrics of ``sae`` on ``acts``.

    Args:
        sae: a sae-lens SAE.
        acts: ``[N, d_in]`` raw activations (held-out).

    Returns:
        ``l0`` (mean active features per token), ``explained_variance``
        (``1 - SSE / SST`` with SST about the per-dimension mean), ``dead_fraction``
        (features never active on ``acts``).
    """
    import torch

    acts = acts.float()
    mean = acts.mean(dim=0)
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for start in range(0, acts.shape[0], batch_size):
            x = acts[start : start + batch_size]
            f = sae.encode(x)
            recon = sae.decode(f)
            sse += float(((recon - x) ** 2).sum())
            sst += float(((x - mean) ** 2).sum())
            active = f != 0
            l0 += float(active.sum())
            fired |= active.any(dim=0)
    return {
        "l0": l0 / acts.shape[0],
        "explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"),
        "dead_fraction": float((~fired).float().mean()),
    }


def spliced_losses(
    model: "HookedTransformer",
    chunks: "torch.Tensor",
    saes: dict[int, "SAE"],
    *,
    hook_template: str = RESID_POST_TEMPLATE,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[float, dict[int, float]]:
    """Model cross-entropy clean and with one layer's hook replaced by its SAE reconstruction.

    The SAE is applied at every non-BOS position of layer L's hook; the rest of the
    model runs from layer L+1 on the spliced residual (``start_at_layer``), so each
    layer costs a partial forward pass.

    Args:
        model: the model.
        chunks: ``[n, ctx]`` BOS-prefixed token ids (held-out).
        saes: layer -> SAE reading ``hook_template`` of that layer.

    Returns:
        ``(clean_loss, {layer: spliced_loss})``: mean next-token CE over all predicted
        positions of ``chunks``.
    """
    import torch
    from tqdm.auto import tqdm

    if not hook_template.endswith("hook_resid_post"):
        raise ValueError("spliced_losses splices resid_post hooks only (it restarts the model at layer L+1)")
    hooks = {layer: hook_from_template(hook_template, layer) for layer in sorted(saes)}
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    device = next(model.parameters()).device
    names = set(hooks.values())
    clean_sum, spliced_sum, count = 0.0, {layer: 0.0 for layer in hooks}, 0
    bar = tqdm(total=len(chunks), desc="spliced CE loss", unit="chunk", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size].to(device)
            n_pred = batch.shape[0] * (batch.shape[1] - 1)
            loss, cache = model.run_with_cache(batch, names_filter=lambda n: n in names, return_type="loss")
            clean_sum += float(loss) * n_pred
            mask = batch != bos if bos is not None else torch.ones_like(batch, dtype=torch.bool)
            for layer, hook in hooks.items():
                spliced_sum[layer] += _spliced_loss(model, batch, cache[hook], saes[layer], mask, layer) * n_pred
            count += n_pred
            del cache
            bar.update(len(batch))
    bar.close()
    return clean_sum / count, {layer: s / count for layer, s in spliced_sum.items()}


def _spliced_loss(model, batch, resid, sae, mask, layer: int) -> float:
    """Mean CE of ``batch`` with ``resid`` (``[b, ctx, d_model]``, layer ``layer``'s
    resid_post) replaced by its SAE reconstruction at the ``mask`` positions."""
    resid = resid.clone()
    x = resid[mask].to(sae.W_enc.device)
    resid[mask] = sae.decode(sae.encode(x)).to(resid.device, resid.dtype)
    # for the last block only the final norm and unembedding remain
    return float(model(resid, start_at_layer=layer + 1, tokens=batch, return_type="loss"))
