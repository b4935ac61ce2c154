"""Gated-MLP weights in nn.Linear layout: no copy per forward, identical values."""
from __future__ import annotations


def test_linear_layout_avoids_the_copy_and_changes_no_value():
    import torch

    from trajectory.model.load import use_linear_layout
    from trajectory.testing import tiny_model

    fast = tiny_model()  # tiny_model applies use_linear_layout, as load_model does
    plain = tiny_model()
    for block in plain.blocks:  # back to TransformerLens's own layout
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(block.mlp, name)
            w.data = w.data.contiguous()
    for block in fast.blocks:
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(block.mlp, name)
            assert w.T.is_contiguous() and w.T.contiguous().data_ptr() == w.data_ptr()  # no copy
    tokens = fast.to_tokens("the dark room and the door")
    with torch.no_grad():
        assert torch.equal(fast(tokens), plain(tokens))  # bit-identical
    assert use_linear_layout(plain) is plain
    with torch.no_grad():
        assert torch.equal(plain(tokens), fast(tokens))
    assert plain.blocks[0].mlp.W_in.shape == (plain.cfg.d_model, plain.cfg.d_mlp)
    from trajectory.testing import tiny_gpt2_model

    gpt2 = use_linear_layout(tiny_gpt2_model())  # no gated MLP: left as TransformerLens stores it
    assert all(block.mlp.W_in.is_contiguous() and block.mlp.W_out.is_contiguous() for block in gpt2.blocks)
