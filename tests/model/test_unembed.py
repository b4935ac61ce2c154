"""Unembedding against TransformerLens's own loss (soft-capped Gemma-style and GPT-2-style models)."""
import pytest
import torch

from trajectory.model.unembed import Unembedding
from trajectory.testing import tiny_gpt2_model


@pytest.mark.parametrize("which", ["gemma", "gpt2"])
@pytest.mark.parametrize("rows", [3, 256])
def test_next_token_nll_equals_transformer_lens_loss(tiny_model, which, rows):
    model = tiny_model if which == "gemma" else tiny_gpt2_model()
    torch.manual_seed(1)
    tokens = torch.randint(1, model.cfg.d_vocab, (3, 11))
    with torch.no_grad():
        per_token = model(tokens, return_type="loss", loss_per_token=True)  # [3, 10]
        final = model(tokens, stop_at_layer=model.cfg.n_layers)
    nll = Unembedding(model, rows=rows).next_token_nll(final, tokens)
    assert nll.shape == per_token.shape
    torch.testing.assert_close(nll, per_token.float(), rtol=1e-5, atol=1e-5)


def test_logits_equal_the_model_logits(tiny_model):
    tokens = torch.randint(1, tiny_model.cfg.d_vocab, (2, 7))
    assert tiny_model.cfg.output_logits_soft_cap > 0  # the soft-cap is part of what is checked
    with torch.no_grad():
        expected = tiny_model(tokens)
        final = tiny_model(tokens, stop_at_layer=tiny_model.cfg.n_layers)
    un = Unembedding(tiny_model)
    torch.testing.assert_close(un.logits(un.normalize(final)), expected.float(), rtol=1e-5, atol=1e-5)
