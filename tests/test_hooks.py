"""Hook names are TransformerLens's own: built here and checked against a real model's hook points."""
import pytest

from trajectory import hooks


def test_names_exist_in_the_model(tiny_model):
    points = set(tiny_model.hook_dict)
    for layer in range(tiny_model.cfg.n_layers):
        for name in (hooks.resid_pre(layer), hooks.resid_mid(layer), hooks.resid_post(layer),
                     hooks.attn_hook(layer, "pattern"), hooks.attn_hook(layer, "v"),
                     hooks.hook_from_template(hooks.RESID_POST_TEMPLATE, layer)):
            assert name in points, name
            assert hooks.layer_of(name) == layer


@pytest.mark.parametrize("name, layer, position", [
    ("blocks.12.hook_resid_pre", 12, "pre"), ("blocks.0.hook_resid_mid", 0, "mid"),
    ("blocks.3.hook_resid_post", 3, "post"), ("blocks.3.hook_mlp_out", 3, None),
    ("blocks.7.attn.hook_z", 7, None), ("hook_embed", None, None), ("ln_final.hook_normalized", None, None),
    ("blocks.x.hook_resid_pre", None, None), ("", None, None),
])
def test_parsing(name, layer, position):
    assert hooks.layer_of(name) == layer
    assert hooks.resid_position(name) == position


def test_template_without_layer_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no \{layer\} placeholder"):
        hooks.hook_from_template("blocks.hook_resid_post", 3)
