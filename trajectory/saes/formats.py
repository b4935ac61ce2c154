"""One SAE from a file or folder in any common format, as a sae-lens ``SAE``.

Formats recognised by :func:`load_sae` (:func:`detect_format` names them):

``sae-lens``
    a folder with ``cfg.json`` + ``sae_weights.safetensors`` (``SAE.save_model``).
``gemma-scope-npz``
    Gemma Scope ``params.npz`` (or a folder holding one): ``W_enc [d_in, d_sae]``,
    ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``, ``threshold [d_sae]``
    -> ``JumpReLUSAE`` (``apply_b_dec_to_input=False``, as sae-lens loads Gemma Scope).
``dictionary-learning``
    a dictionary_learning checkpoint ``ae.pt`` (+ optional ``config.json`` beside it):
    ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``,
    ``decoder.weight [d_in, d_sae]``, ``b_dec [d_in]`` (``bias`` for the ReLU
    ``AutoEncoder``), scalars ``k`` and ``threshold``. ``AutoEncoderTopK`` ->
    ``TopKSAE``; ``BatchTopKSAE`` with a learned threshold (>= 0) -> ``JumpReLUSAE``
    with that threshold for every feature (its inference path, ``use_threshold=True``);
    ``AutoEncoder`` -> ``StandardSAE``. Without ``config.json`` a checkpoint with ``k``
    is read as ``AutoEncoderTopK``. All of them subtract ``b_dec`` from the input
    (``apply_b_dec_to_input=True``).
``state-dict``
    a plain state dict ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec`` (+ ``threshold``
    -> JumpReLU, + scalar ``k`` -> TopK, else ReLU/standard) in a ``.safetensors``
    file or a torch file; lower-case ``w_enc``/``w_dec`` (Gemma Scope 2) work too.

A folder holding one SAE per layer in these formats is read by :func:`load_sae_folder`.

Torch files are read with ``torch.load(weights_only=True)``: nothing is unpickled
beyond tensors and plain containers. Shapes are checked against each other and a
mismatch names the tensor, its shape and the shape it needs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from trajectory.hooks import RESID_POST_TEMPLATE, hook_from_template, layer_of

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAE_LENS_CFG = "cfg.json"
SAE_LENS_WEIGHTS = "sae_weights.safetensors"


# ----------------------------------------------------------------------------- building


def build_sae(
    cfg: Mapping[str, Any],
    state_dict: Mapping[str, "torch.Tensor"],
    *,
    dtype: str | None = None,
    device: str = "cpu",
) -> "SAE":
    """Rebuild a sae-lens SAE from its config dict (``sae.cfg.to_dict()``) and tensors.

    The class comes from ``cfg["architecture"]``. The module is created on the meta
    device and the given tensors are assigned (no random initialisation, no copy when
    dtype and device already match), as sae-lens's own loaders do.
    """
    import torch
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    cfg = handle_config_defaulting(dict(cfg))
    if dtype is not None:
        cfg["dtype"] = str(dtype).replace("torch.", "")
    cfg["device"] = str(device)
    sae_cfg = SAE.get_sae_config_class_for_architecture(cfg["architecture"]).from_dict(cfg)
    sae_cls = SAE.get_sae_class_for_architecture(sae_cfg.architecture())
    sae_cfg.device = "meta"
    sae = sae_cls(sae_cfg)
    sae.cfg.device = str(device)
    target = getattr(torch, sae_cfg.dtype)
    sd = {k: v.to(device=device, dtype=target) if v.is_floating_point() else v.to(device) for k, v in state_dict.items()}
    sae.process_state_dict_for_loading(sd)
    expected = {k: list(v.shape) for k, v in sae.state_dict().items()}
    missing, extra = set(expected) - set(sd), set(sd) - set(expected)
    if missing or extra:
        raise ValueError(
            f"tensors do not match a {sae_cfg.architecture()} SAE: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    wrong = [f"{k} has shape {list(sd[k].shape)}, needs {expected[k]}" for k in expected if list(sd[k].shape) != expected[k]]
    if wrong:  # else torch's own "size mismatch for b_dec" names neither the cfg nor the fix
        raise ValueError(
            f"tensors do not match a {sae_cfg.architecture()} SAE with d_in {sae_cfg.d_in}, d_sae {sae_cfg.d_sae} "
            f"(its cfg): {'; '.join(wrong)}"
        )
    sae.load_state_dict(sd, assign=True)
    return sae


def _make_sae(
    architecture: str,
    tensors: Mapping[str, "torch.Tensor"],
    *,
    dtype: str,
    device: str,
    hook_name: str | None,
    apply_b_dec_to_input: bool,
    k: int | None = None,
    source: str = "",
) -> "SAE":
    d_in, d_sae = _check_shapes(tensors, source=source)
    cfg: dict[str, Any] = dict(
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        dtype=dtype,
        device=device,
        apply_b_dec_to_input=apply_b_dec_to_input,
        normalize_activations="none",
        metadata={"hook_name": hook_name} if hook_name else {},
    )
    if architecture == "topk":
        cfg["k"] = int(k)  # type: ignore[arg-type]
    return build_sae(cfg, tensors, dtype=dtype, device=device)


def _check_shapes(t: Mapping[str, "torch.Tensor"], *, source: str = "") -> tuple[int, int]:
    """``(d_in, d_sae)`` from ``W_enc``; a clear error when another tensor disagrees."""
    where = f" in {source}" if source else ""
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if key not in t:
            raise ValueError(f"SAE tensors{where} lack {key!r} (found {sorted(t)})")
    if t["W_enc"].ndim != 2:
        raise ValueError(f"W_enc{where} has shape {tuple(t['W_enc'].shape)}; it must be [d_in, d_sae]")
    d_in, d_sae = (int(x) for x in t["W_enc"].shape)
    want = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key, shape in want.items():
        if key in t and tuple(t[key].shape) != shape:
            raise ValueError(
                f"dimension mismatch{where}: {key} has shape {tuple(t[key].shape)} but W_enc is "
                f"[d_in={d_in}, d_sae={d_sae}], so {key} must be {list(shape)}"
            )
    return d_in, d_sae


# ----------------------------------------------------------------------------- reading files


def _read_tensors(path: Path) -> dict[str, "torch.Tensor"]:
    """Tensors of a safetensors, npz or torch file (never unpickling arbitrary objects)."""
    import torch

    name = path.name.lower()
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    if name.endswith(".npz"):
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: torch.from_numpy(np.ascontiguousarray(data[k])) for k in data.files}
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{path} is not a readable .npz file ({exc})") from None
    if name.endswith(TORCH_SUFFIXES):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError and friends
            raise ValueError(
                f"{path} could not be read with torch.load(weights_only=True) ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); only plain tensor state dicts are accepted — "
                "arbitrary pickles are never loaded. Convert it to safetensors."
            ) from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path} does not hold a flat state dict of tensors")
        return dict(obj)
    raise ValueError(f"unknown SAE file type {path.name!r}; use .safetensors, .npz or a torch file ({', '.join(TORCH_SUFFIXES)})")


def detect_format(path: str | Path) -> str:
    """Name the format of ``path`` (see the module docstring); ``ValueError`` when unknown."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAE path {path} does not exist")
    if path.is_dir():
        if (path / SAE_LENS_CFG).is_file() and (path / SAE_LENS_WEIGHTS).is_file():
            return "sae-lens"
        if (path / "params.npz").is_file():
            return "gemma-scope-npz"
        if (path / "ae.pt").is_file():
            return "dictionary-learning"
        if (path / "params.safetensors").is_file():
            return "state-dict"
        raise ValueError(
            f"{path} is not a known SAE folder: expected cfg.json + sae_weights.safetensors (sae-lens), "
            "params.npz (Gemma Scope), ae.pt (dictionary_learning) or params.safetensors"
        )
    name = path.name.lower()
    if name.endswith(".npz"):
        return "gemma-scope-npz"
    if name.endswith((".safetensors",) + TORCH_SUFFIXES):
        keys = set(_read_tensors(path))
        return "dictionary-learning" if "encoder.weight" in keys else "state-dict"
    raise ValueError(f"unknown SAE file type {path.name!r}; use a sae-lens folder, .npz, .safetensors or a torch file")


def _resolve_file(path: Path, fmt: str) -> Path:
    if path.is_file():
        return path
    return path / {"gemma-scope-npz": "params.npz", "dictionary-learning": "ae.pt", "state-dict": "params.safetensors"}[fmt]


def load_sae(
    path: str | Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    hook_name: str | None = None,
    d_in: int | None = None,
) -> "SAE":
    """Load one SAE of any supported format (auto-detected) as a sae-lens ``SAE``.

    Args:
        path: file or folder (see the module docstring for the formats).
        dtype / device: of the returned SAE.
        hook_name: TransformerLens hook the SAE reads; stored in ``sae.cfg.metadata.hook_name``
            (a sae-lens folder keeps its own unless this is given).
        d_in: expected input width; a clear error when the file's differs.

    Example:
        >>> from trajectory.saes.formats import load_sae
        >>> sae = load_sae("layer_6/params.npz", hook_name="blocks.6.hook_resid_post")  # doctest: +SKIP
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "sae-lens":
        from sae_lens import SAE

        sae = SAE.load_from_disk(path, device=device, dtype=dtype)
    else:
        file = _resolve_file(path, fmt)
        tensors = _read_tensors(file)
        if fmt == "dictionary-learning" or "encoder.weight" in tensors:
            sae = _from_dictionary_learning(tensors, _dl_config(file), dtype=dtype, device=device, hook_name=hook_name, source=str(file))
        else:
            sae = _from_state_dict(tensors, dtype=dtype, device=device, hook_name=hook_name, source=str(file))
    if hook_name:
        sae.cfg.metadata.hook_name = hook_name
    if d_in is not None and int(sae.cfg.d_in) != int(d_in):
        raise ValueError(f"the SAE in {path} has d_in {sae.cfg.d_in} but {d_in} was expected (the model's hook width)")
    return sae


def load_sae_folder(
    path: Path,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    layers: Sequence[int] | None = None,
    hook_template: str = RESID_POST_TEMPLATE,
    progress: bool = True,
) -> dict[int, tuple[Path, "SAE"]]:
    """``{layer: (child, SAE)}`` for each child of folder ``path`` that :func:`load_sae` reads.

    The layer comes from the SAE's ``cfg.metadata.hook_name`` (``blocks.<L>.``), else
    from the first number in the child's name; SAEs without a hook name get
    ``hook_template``'s. Only ``layers`` are kept when given; other children are skipped.
    """
    from tqdm.auto import tqdm

    wanted = None if layers is None else {int(x) for x in layers}
    found: dict[int, tuple[Path, Any]] = {}
    children = sorted(c for c in Path(path).iterdir() if not c.name.startswith("."))
    for child in tqdm(children, desc=f"loading SAEs from {Path(path).name}", disable=not progress, unit="sae"):
        try:
            detect_format(child)
        except ValueError:
            continue  # not an SAE (a README, a log ...)
        sae = load_sae(child, dtype=dtype, device=device)
        hook = getattr(sae.cfg.metadata, "hook_name", None)
        layer = _child_layer(child, hook)
        if layer in found:
            raise ValueError(f"two SAEs for layer {layer} in {path}: {found[layer][0].name} and {child.name}")
        if wanted is not None and layer not in wanted:
            continue
        if not hook:
            sae.cfg.metadata.hook_name = hook_from_template(hook_template, layer)
        found[layer] = (child, sae)
    return found


def _child_layer(child: Path, hook: str | None) -> int:
    """The layer of an SAE file: from its hook name, else the first number in its name."""
    layer = layer_of(hook or "")
    if layer is not None:
        return layer
    n = re.search(r"(\d+)", child.stem)
    if n is None:
        raise ValueError(f"cannot tell the layer of {child}: name it layer_<L> or set cfg metadata hook_name")
    return int(n.group(1))


def _from_state_dict(t: dict, *, dtype: str, device: str, hook_name: str | None, source: str) -> "SAE":
    t = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in t.items()}
    t.pop("scaling_factor", None)  # Gemma Scope ships an all-ones one
    k = t.pop("k", None)
    if "threshold" in t and t["threshold"].ndim == 0:
        # a BatchTopK-style global threshold (e.g. dictionary_learning Matryoshka) -> per feature
        d_in, d_sae = _check_shapes({kk: v for kk, v in t.items() if kk != "threshold"}, source=source)
        t.pop("group_sizes", None)
        t["threshold"] = t["threshold"].expand(d_sae).clone()
        return _make_sae("jumprelu", t, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=True, source=source)
    if "threshold" in t:
        return _make_sae("jumprelu", t, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=False, source=source)
    if k is not None:
        return _make_sae("topk", t, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=False, k=int(k), source=source)
    return _make_sae("standard", t, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=False, source=source)


def _dl_config(file: Path) -> dict:
    cfg_file = file.parent / "config.json"
    if not cfg_file.is_file():
        return {}
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_file} is not valid JSON ({exc})") from None
    return dict(cfg.get("trainer", cfg))


def _from_dictionary_learning(
    t: dict, config: dict, *, dtype: str, device: str, hook_name: str | None, source: str
) -> "SAE":
    """dictionary_learning ``AutoEncoderTopK`` / ``BatchTopKSAE`` / ``AutoEncoder`` -> sae-lens."""
    if "encoder.weight" not in t or "decoder.weight" not in t:
        raise ValueError(f"{source} is not a dictionary_learning checkpoint (keys {sorted(t)})")
    enc, dec = t["encoder.weight"], t["decoder.weight"]
    if enc.ndim != 2 or dec.ndim != 2 or tuple(dec.shape) != tuple(enc.shape[::-1]):
        raise ValueError(
            f"dimension mismatch in {source}: encoder.weight {tuple(enc.shape)} must be [d_sae, d_in] and "
            f"decoder.weight {tuple(dec.shape)} must be [d_in, d_sae]"
        )
    d_sae, d_in = (int(x) for x in enc.shape)
    b_dec = t.get("b_dec", t.get("bias"))
    b_enc = t.get("encoder.bias")
    if b_dec is None or b_enc is None:
        raise ValueError(f"{source} lacks {'b_dec' if b_dec is None else 'encoder.bias'}")
    tensors = {"W_enc": enc.T.contiguous(), "W_dec": dec.T.contiguous(), "b_enc": b_enc, "b_dec": b_dec}
    dict_class = str(config.get("dict_class", ""))
    k = t.get("k", config.get("k"))
    threshold = t.get("threshold")
    # without config.json, TopK and BatchTopK checkpoints have the same keys; TopK is assumed
    is_batch = "BatchTopK" in dict_class
    if dict_class == "AutoEncoder" or (k is None and threshold is None):  # plain ReLU AutoEncoder
        return _make_sae("standard", tensors, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=True, source=source)
    if is_batch and threshold is not None and float(threshold) >= 0:
        tensors["threshold"] = threshold.reshape(()).expand(d_sae).clone().float()
        return _make_sae("jumprelu", tensors, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=True, source=source)
    if k is None:
        raise ValueError(f"{source}: a TopK checkpoint needs k (in the state dict or config.json)")
    k = int(k.item() if hasattr(k, "item") else k)
    if not 0 < k <= d_sae:
        raise ValueError(f"{source}: k={k} is out of range for d_sae={d_sae}")
    return _make_sae("topk", tensors, dtype=dtype, device=device, hook_name=hook_name, apply_b_dec_to_input=True, k=k, source=source)


# ----------------------------------------------------------------------------- model fit

#: hooks of width d_model: inside a block (``blocks.{L}.<name>``) and outside the blocks
_D_MODEL_BLOCK_HOOKS = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_mlp_in"}
_D_MODEL_HOOKS = {"hook_embed", "hook_pos_embed"}
#: block hooks of width d_mlp (MLP activations)
_D_MLP_BLOCK_HOOKS = {"mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear"}


def _block_hook(hook_name: str) -> str | None:
    """The part of ``blocks.{L}.<part>`` after the block index; ``None`` outside the blocks."""
    return hook_name.split(".", 2)[2] if layer_of(hook_name) is not None else None


def hook_width(model: "HookedTransformer", hook_name: str) -> int:
    """Width of the last dimension an SAE sees at ``hook_name`` of ``model``.

    Residual-stream-like hooks are ``d_model``, MLP activations ``d_mlp``, ``attn.hook_z``
    ``n_heads * d_head`` (sae-lens flattens heads); others are measured with a
    two-token forward pass.
    """
    cfg = model.cfg
    if hook_name not in model.hook_dict:
        raise ValueError(f"{cfg.model_name} has no hook {hook_name!r} (e.g. blocks.0.hook_resid_post)")
    part = _block_hook(hook_name)
    if hook_name in _D_MODEL_HOOKS or part in _D_MODEL_BLOCK_HOOKS:
        return int(cfg.d_model)
    if part in _D_MLP_BLOCK_HOOKS:
        return int(cfg.d_mlp)
    if part == "attn.hook_z":
        return int(cfg.n_heads * cfg.d_head)
    import torch

    seen: dict[str, int] = {}

    def grab(act, hook):
        seen["w"] = int(act.shape[-1])
        raise StopIteration

    with torch.no_grad():
        try:
            model.run_with_hooks(torch.zeros(1, 2, dtype=torch.long), fwd_hooks=[(hook_name, grab)])
        except StopIteration:
            pass
    if "w" not in seen:
        raise ValueError(f"hook {hook_name!r} of {cfg.model_name} did not fire on a forward pass")
    return seen["w"]


def check_sae_fits(sae: "SAE", model: "HookedTransformer", hook_name: str | None = None, *, what: str = "the SAE") -> None:
    """Raise ``ValueError`` unless ``sae`` reads a hook of ``model`` with its width.

    ``hook_name`` defaults to ``sae.cfg.metadata.hook_name``.
    """
    hook = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    if not hook:
        raise ValueError(f"{what} does not say which hook it reads; pass hook_name (e.g. blocks.6.hook_resid_post)")
    width = hook_width(model, hook)
    if int(sae.cfg.d_in) != width:
        raise ValueError(
            f"{what} has d_in {sae.cfg.d_in} but {hook} of {model.cfg.model_name} has width {width}: "
            "this SAE was made for another model (or another hook)"
        )
