"""LoRA fine-tuning and LoRA activations on a tiny transformers Gemma 3 built from a config.

References computed here, independently of the package: lora_A outputs read by hooks the
test registers itself on a model loaded with plain peft; the spliced loss through
forward pre-hooks on ``lora_B`` (whose input is the lora_A output) and a hand-written
cross-entropy; adapter-off loss from the base model without peft.
"""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from trajectory.testing import VOCAB, random_sae, tiny_tokenizer
from trajectory.training.corpus import load_corpus, tokenize_chunks
from trajectory.training.lora import (
    LoraConfig,
    finetune,
    load_base_model,
    parse_targets,
    resolve_precision,
)
from trajectory.training.lora_collect import (
    LORA_HOOK,
    CollectConfig,
    collect,
    load_adapter,
    lora_spliced_losses,
)
from trajectory.training.store import ActivationStore

peft = pytest.importorskip("peft")

CTX = 16
MODULES = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]


def save_tiny_hf_gemma(folder: Path, hidden_size: int = 32, seed: int = 0) -> Path:
    """A random 2-layer Gemma 3 (transformers) with the tiny word tokenizer, saved to ``folder``."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = tiny_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(VOCAB), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                           max_position_embeddings=64, sliding_window=8, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def user_adapter(base_dir: Path, folder: Path, rank: int = 2, random_b: bool = True) -> Path:
    """An adapter made the way a user would: plain peft on the base model, then save_pretrained.

    ``random_b``: peft's ``init_lora_weights=False`` makes B random too, so the adapter
    changes the model (later layers' lora_A inputs then depend on earlier adapters).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj", "down_proj"],
                          init_lora_weights=not random_b)
    peft.get_peft_model(base, cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_hf_gemma(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="module")
def chunks(base_dir, corpus_file):
    _, docs = load_corpus(corpus_file)
    tok = tiny_tokenizer()
    return tokenize_chunks(types.SimpleNamespace(tokenizer=tok), docs, CTX, max_tokens=600)


def reference_lora_A(base_dir, adapter, chunks):
    """``{module name: [n_chunks, ctx, r]}`` lora_A outputs from a full forward with plain peft."""
    from transformers import AutoModelForCausalLM

    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    outs, handles = {}, []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            short = name.removeprefix("base_model.model.model.").removesuffix(".lora_A.default")
            handles.append(module.register_forward_hook(lambda m, i, o, short=short: outs.__setitem__(short, o)))
    with torch.no_grad():
        model(input_ids=chunks)
    for h in handles:
        h.remove()
    return outs


def ce(logits, ids):
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    return float(-logp.gather(-1, ids[:, 1:, None]).mean())


def test_parse_targets():
    assert parse_targets("q,k,v,o,gate,up,down") == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"]
    assert parse_targets("all") == parse_targets(["q", "k", "v", "o", "gate", "up", "down"])
    assert parse_targets(["q", "q_proj", "c_attn"]) == ["q_proj", "c_attn"]
    with pytest.raises(ValueError, match="no LoRA targets"):
        parse_targets(" , ")


def test_collect_columns_equal_lora_A_outputs(base_dir, corpus_file, chunks, tmp_path):
    adapter = user_adapter(base_dir, tmp_path / "adapter", rank=2)
    folder = collect(CollectConfig(adapter=adapter, base_model=str(base_dir), corpus=str(corpus_file),
                                   context_length=CTX, batch_size=3, max_tokens=600, progress=False))
    assert folder == adapter / "activations"
    store = ActivationStore.open(folder)
    meta = json.loads((folder / "meta.json").read_text())
    expected_columns = [f"layers.{layer}.{m}[{i}]" for layer in range(2) for m in MODULES for i in range(2)]
    assert store.hooks == [LORA_HOOK] and meta["columns"] == expected_columns
    assert store.d_model == len(expected_columns) == 12

    ref = reference_lora_A(base_dir, adapter, chunks)
    keep = chunks != tiny_tokenizer().bos_token_id
    want = torch.cat([ref[f"layers.{layer}.{m}"] for layer in range(2) for m in MODULES], dim=-1)[keep]
    got = torch.from_numpy(np.array(store.activations(LORA_HOOK)))
    assert got.shape == want.shape == (int(keep.sum()), 12)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(store.tokens, chunks[keep].numpy())
    assert np.array_equal(store.index, keep.nonzero().numpy())


def test_zero_B_means_adapter_on_equals_off(base_dir, chunks, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = user_adapter(base_dir, tmp_path / "fresh", random_b=False)  # peft's init: B = 0
    model = load_adapter(adapter, load_base_model(str(base_dir), "cpu"))
    losses = lora_spliced_losses(model, lambda x: x, chunks, batch_size=4, bos_token_id=2)
    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        reference = ce(plain(input_ids=chunks).logits, chunks)
    assert losses["adapter_on"] == pytest.approx(losses["adapter_off"], abs=1e-6)
    assert losses["adapter_off"] == pytest.approx(reference, abs=1e-5)
    assert losses["spliced"] == pytest.approx(losses["adapter_on"], abs=1e-6)  # identity "SAE"


def test_spliced_loss_matches_independent_splice(base_dir, chunks, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = user_adapter(base_dir, tmp_path / "adapter", rank=2)
    sae = random_sae(12, 24, architecture="topk", k=4, seed=5)
    model = load_adapter(adapter, load_base_model(str(base_dir), "cpu"))
    losses = lora_spliced_losses(model, sae, chunks, batch_size=5, bos_token_id=2)

    ref = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    bs = {n.removeprefix("base_model.model.model.").removesuffix(".lora_B.default"): m
          for n, m in ref.named_modules() if n.endswith("lora_B.default")}
    order = [f"layers.{layer}.{m}" for layer in range(2) for m in MODULES]
    clean = {}
    hs = [bs[n].register_forward_pre_hook(lambda m, a, n=n: clean.__setitem__(n, a[0])) for n in order]
    with torch.no_grad():
        on_logits = ref(input_ids=chunks).logits
    for h in hs:
        h.remove()
    rows = torch.cat([clean[n] for n in order], -1)  # [n, ctx, 12]
    with torch.no_grad():
        recon = sae(rows.reshape(-1, 12)).reshape(rows.shape)
    recon[chunks == 2] = rows[chunks == 2]
    parts = dict(zip(order, recon.split(2, dim=-1)))
    hs = [bs[n].register_forward_pre_hook(lambda m, a, n=n: (parts[n],)) for n in order]
    with torch.no_grad():
        spliced_logits = ref(input_ids=chunks).logits
    for h in hs:
        h.remove()
    assert losses["adapter_on"] == pytest.approx(ce(on_logits, chunks), abs=1e-5)
    assert losses["spliced"] == pytest.approx(ce(spliced_logits, chunks), abs=1e-5)
    assert abs(losses["spliced"] - losses["adapter_on"]) > 1e-4  # the random SAE does change something
    assert abs(losses["adapter_on"] - losses["adapter_off"]) > 1e-4


def test_adapter_for_another_base_model_is_refused(base_dir, corpus_file, tmp_path):
    other = save_tiny_hf_gemma(tmp_path / "wide-base", hidden_size=48)
    adapter = user_adapter(other, tmp_path / "wide-adapter")
    out = tmp_path / "store"
    with pytest.raises(ValueError) as err:
        collect(CollectConfig(adapter=adapter, out=out, base_model=str(base_dir), corpus=str(corpus_file),
                              context_length=CTX, max_tokens=200, progress=False))
    text = str(err.value)
    assert str(other) in text and str(base_dir) in text and "48" in text and "32" in text
    assert not (out / "meta.json").exists()


def test_not_an_adapter_folder(base_dir, corpus_file, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        collect(CollectConfig(adapter=tmp_path / "empty", base_model=str(base_dir), corpus=str(corpus_file),
                              context_length=CTX, max_tokens=200, progress=False))


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(Path(folder) / "adapter_model.safetensors")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_finetune_reduces_loss_and_is_deterministic(base_dir, corpus_file, chunks, tmp_path, precision):
    from transformers import AutoModelForCausalLM

    def run(out, seed):
        return finetune(LoraConfig(out=out, base_model=str(base_dir), corpus=str(corpus_file), rank=1,
                                   targets="q,k,v,o,gate,up,down", steps=12, batch_size=4, context_length=CTX,
                                   lr=2e-2, seed=seed, max_tokens=600, n_heldout_chunks=4, precision=precision,
                                   progress=False))

    a, b, c = run(tmp_path / "a", 0), run(tmp_path / "b", 0), run(tmp_path / "c", 1)
    manifest = json.loads((a / "manifest.json").read_text())
    curve = json.loads((a / "loss_curve.json").read_text())
    assert manifest["rank"] == 1 and manifest["steps"] == 12 and manifest["seed"] == 0
    assert manifest["precision"] == precision
    assert manifest["targets"] == parse_targets("all") and manifest["corpus"] == corpus_file.name
    assert len(curve["loss"]) == 12 and manifest["final_loss"] == curve["loss"][-1]
    assert (a / "loss_curve.png").stat().st_size > 1000
    assert manifest["heldout_loss_after"] < manifest["heldout_loss_before"]
    assert np.mean(curve["loss"][-3:]) < np.mean(curve["loss"][:3])
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert len(wa) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    # the saved adapter, loaded with plain peft, lowers the loss on the corpus
    plain = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        before = ce(plain(input_ids=chunks).logits, chunks)
        tuned = peft.PeftModel.from_pretrained(plain, str(a)).eval()
        after = ce(tuned(input_ids=chunks).logits, chunks)
    assert after < before


def test_finetune_bad_targets(base_dir, corpus_file, tmp_path):
    with pytest.raises(ValueError, match=r"target modules \[.nope.\] are not linear layers"):
        finetune(LoraConfig(out=tmp_path / "x", base_model=str(base_dir), corpus=str(corpus_file), targets="q,nope",
                            steps=1, context_length=CTX, max_tokens=200, progress=False))
    assert not (tmp_path / "x" / "manifest.json").exists()
    with pytest.raises(ValueError, match="rank must be at least 1"):
        LoraConfig(out=tmp_path / "y", rank=0)
    with pytest.raises(ValueError, match="precision must be auto, float32 or bfloat16"):
        LoraConfig(out=tmp_path / "y", precision="float16")


def test_precision_names():
    assert LoraConfig(out="x", precision="bf16").precision == "bfloat16"
    assert resolve_precision("fp32", "cpu") == "float32" and resolve_precision("bfloat16", "cpu") == "bfloat16"
