"""Tiny, fully offline fixtures: a Gemma-2-style model and SAE banks in seconds.

Used by this package's tests and offered to users for their own. The model has
everything the method must handle: pre- and post-attention RMSNorms
(``ln1_post``), grouped-query attention (4 query heads, 2 KV heads), attention and
logit soft-capping, rotary positions, alternating global / sliding-window layers,
a gated MLP and BOS prepended by the tokenizer. Its tokenizer is a word-level one
built in memory from :data:`VOCAB` (unknown words map to ``<unk>``).

Example:
    >>> from trajectory.testing import tiny_model, tiny_bank
    >>> model = tiny_model()
    >>> model.to_str_tokens("the dark room")
    ['<bos>', 'the', 'dark', 'room']
    >>> bank = tiny_bank(model, d_sae=64)
    >>> sorted(bank), bank[1].cfg.d_in
    ([0, 1, 2], 32)
"""
from __future__ import annotations

import functools
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from trajectory.saes.bank import SAEBank

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]

#: Words of the tiny vocabulary (the default prompt's words included).
VOCAB = SPECIAL + sorted(
    set(
        """
        the final correct answer : max , mark and smith are in empty dark room . left gave flashlight to
        a an of is was it he she they we you i that this with for on at by from as be have has had not but
        or if then when what which who where why how all any some no one two three four five more most
        other into over under after before about up down out off again new old good bad big small long
        short first last next same different cat dog house tree car book water fire light night day sun
        moon star city road river sea king queen man woman child boy girl friend door window table chair
        red blue green black white open close run walk see look find give take make go come say tell ask
        know think want like love hate eat drink sleep read write play work live die because so very
        python function class return value list dict string number file module import error type
        """.split()
    )
)

CORPUS_SENTENCES = [
    "the final correct answer : max , mark and smith are in the empty dark room .",
    "smith left . mark gave flashlight to max .",
    "the cat sat on the table and the dog ran to the door .",
    "a man and a woman walk to the river at night .",
    "the king gave the queen a book about the sea .",
    "when the sun is up the city is light and the road is long .",
    "python function return value list dict string number file module import error type class",
    "she said that the old house by the tree was empty .",
    "they open the window and look at the moon and the star .",
    "if you want to know the answer , ask the child who read the book .",
]


@functools.lru_cache(maxsize=None)
def _tokenizer_dir() -> str:
    """Build the word-level tokenizer once, save it, return its folder.

    Saving and reloading avoids transformers' ``KeyError: 'name_or_path'`` with
    purely in-memory tokenizers.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    folder = tempfile.mkdtemp(prefix="trajectory-tiny-tokenizer-")
    fast.save_pretrained(folder)
    return folder


def tiny_tokenizer():
    """The fixture's word-level tokenizer (prepends ``<bos>``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir())


def tiny_config(**overrides):
    """``HookedTransformerConfig`` of the tiny Gemma-2-style model (3 layers, d_model 32).

    Layer 1 is a sliding-window layer (window 4); layers 0 and 2 attend globally.
    """
    from transformer_lens import HookedTransformerConfig

    cfg = dict(
        d_model=32,
        d_head=8,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=64,
        n_layers=3,
        n_ctx=128,
        d_vocab=len(VOCAB),
        act_fn="gelu_pytorch_tanh",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=8,
        rotary_base=10000,
        gated_mlp=True,
        final_rms=True,
        use_normalization_before_and_after=True,
        attn_scores_soft_cap=50.0,
        output_logits_soft_cap=30.0,
        use_local_attn=True,
        attn_types=["global", "local", "global"],
        window_size=4,
        default_prepend_bos=True,
        original_architecture="Gemma2ForCausalLM",
        model_name="tiny-gemma2",
        seed=0,
        init_weights=True,
        dtype=None,
        device="cpu",
    )
    cfg.update(overrides)
    if cfg["dtype"] is None:
        import torch

        cfg["dtype"] = torch.float32
    return HookedTransformerConfig(**cfg)


def tiny_model(seed: int = 0, **overrides) -> "HookedTransformer":
    """A randomly initialised tiny Gemma-2-style ``HookedTransformer`` (deterministic per seed).

    Norm weights are randomised around 1 so that the post-attention norm is not
    the identity, which a test of the method must be able to tell apart.
    """
    import torch
    from transformer_lens import HookedTransformer

    cfg = tiny_config(seed=seed, **overrides)
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):  # RMSNorm weights
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:  # larger weights than the default init, so attention is not uniform
                p.mul_(2.0)
    model.eval()
    from trajectory.model.load import use_linear_layout

    return use_linear_layout(model)


def tiny_gpt2_model(seed: int = 0) -> "HookedTransformer":
    """A tiny GPT-2-style model (LayerNorm, no post-attention norm, b_O present)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_heads=4, d_mlp=64, n_layers=2, n_ctx=128, d_vocab=len(VOCAB),
        act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=True, model_name="tiny-gpt2", seed=seed, device="cpu",
    )
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tiny_tokenizer())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("b_O") or name.endswith("b_Q") or name.endswith("b_V"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif not (name.endswith(".w") or name.endswith(".b")):
                p.mul_(3.0)
    model.eval()
    return model


def random_sae(
    d_in: int,
    d_sae: int,
    *,
    architecture: str = "jumprelu",
    seed: int = 0,
    k: int = 16,
    dtype: str = "float32",
    device: str = "cpu",
    hook_name: str | None = None,
):
    """A sae-lens SAE with random weights that fires on a fair share of inputs.

    ``architecture`` is ``"jumprelu"``, ``"topk"`` or ``"standard"``. Encoder
    columns are unit vectors, the decoder their transpose; JumpReLU thresholds
    and the encoder bias are set so that about a third of the features are active
    on a typical residual vector.
    """
    import torch
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    common = dict(d_in=d_in, d_sae=d_sae, dtype=dtype, device=device, apply_b_dec_to_input=False)
    if architecture == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    elif architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(k=k, **common))
    elif architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    else:
        raise ValueError(f"unknown architecture {architecture!r}; use jumprelu, topk or standard")
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W = torch.randn(d_in, d_sae, generator=g)
        W = W / W.norm(dim=0, keepdim=True)
        sae.W_enc.copy_(W.to(sae.W_enc.dtype))
        sae.W_dec.copy_(W.T.contiguous().to(sae.W_dec.dtype))
        sae.b_enc.copy_((-0.1 * torch.rand(d_sae, generator=g)).to(sae.b_enc.dtype))
        sae.b_dec.copy_((0.05 * torch.randn(d_in, generator=g)).to(sae.b_dec.dtype))
        if architecture == "jumprelu":
            sae.threshold.copy_((0.2 + 0.3 * torch.rand(d_sae, generator=g)).to(sae.threshold.dtype))
    return sae


def tiny_bank(
    model: "HookedTransformer",
    *,
    d_sae: int = 64,
    architecture: str = "jumprelu",
    seed: int = 0,
    k: int = 16,
    dtype: str = "float32",
    hook_template: str = "blocks.{layer}.hook_resid_post",
) -> "SAEBank":
    """A bank of :func:`random_sae` SAEs, one per layer of ``model``."""
    from trajectory.saes.bank import SAEBank

    saes = {
        layer: random_sae(
            model.cfg.d_model,
            d_sae,
            architecture=architecture,
            seed=seed + layer,
            k=k,
            dtype=dtype,
            hook_name=hook_template.format(layer=layer),
        )
        for layer in range(model.cfg.n_layers)
    }
    return SAEBank.from_saes(
        saes,
        hook_template=hook_template,
        model_name=model.cfg.model_name,
        neuronpedia_ids={layer: f"{model.cfg.model_name}/{layer}-tiny-res" for layer in saes},
    )
