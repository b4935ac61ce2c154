"""TransformerLens hook names, and reading a layer back out of them.

The hook names are TransformerLens's own (``blocks.{L}.hook_resid_pre``,
``blocks.{L}.attn.hook_pattern`` ...); this module only builds and parses them, so no
other module writes a ``blocks\\.(\\d+)`` pattern of its own.

Example:
    >>> resid_pre(6), layer_of("blocks.6.hook_resid_post"), layer_of("hook_embed")
    ('blocks.6.hook_resid_pre', 6, None)
    >>> resid_position("blocks.3.hook_resid_mid")
    'mid'
"""
from __future__ import annotations

import re

#: SAE hook for layers of banks that do not name one (the residual stream after block L).
RESID_POST_TEMPLATE = "blocks.{layer}.hook_resid_post"

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")


def resid_pre(layer: int) -> str:
    """``blocks.{layer}.hook_resid_pre``: the residual stream entering block ``layer``."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """``blocks.{layer}.hook_resid_mid``: after attention, before the MLP."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    """``blocks.{layer}.hook_resid_post``: the residual stream leaving block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def attn_hook(layer: int, name: str) -> str:
    """``blocks.{layer}.attn.hook_{name}`` (``name`` among ``v``, ``z``, ``pattern`` ...)."""
    return f"blocks.{layer}.attn.hook_{name}"


def layer_of(hook_name: str) -> int | None:
    """The block index in ``blocks.{L}.…``; ``None`` for hooks outside the blocks
    (``hook_embed``, ``ln_final.hook_normalized``)."""
    m = _BLOCK.match(hook_name or "")
    return int(m.group(1)) if m else None


def resid_position(hook_name: str) -> str | None:
    """``"pre"``, ``"mid"`` or ``"post"`` for a block's residual-stream hook, else ``None``."""
    m = _RESID.match(hook_name or "")
    return m.group(2) if m else None


def hook_from_template(template: str, layer: int) -> str:
    """``template.format(layer=layer)`` with a clear error when the template lacks ``{layer}``."""
    if "{layer}" not in template:
        raise ValueError(f"hook template {template!r} has no {{layer}} placeholder, e.g. {RESID_POST_TEMPLATE!r}")
    return template.format(layer=layer)
