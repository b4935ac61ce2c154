"""How many bytes a bank of SAEs needs, and whether they fit in memory.

Loading a large bank (Gemma Scope 65k on all 26 layers of Gemma 2 2B: 31 GB in fp32)
into too little memory makes the machine swap or the process die; the loaders check
first and refuse with :class:`BankTooLargeError`, naming the size and the fix.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Bytes per element of the dtypes SAEs are stored in.
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}


class BankTooLargeError(MemoryError):
    """The requested SAEs will not fit in the memory available."""


def itemsize(dtype: Any) -> int:
    """Bytes per element of ``dtype`` (``"bfloat16"``, ``torch.float32`` ...); 4 when unknown."""
    return ITEMSIZE.get(str(dtype).replace("torch.", ""), 4)


def tensors_bytes(shapes: Mapping[str, Sequence[int]], dtype: Any) -> int:
    """Bytes of tensors of these shapes (``{name: [d_in, d_sae]}``) in ``dtype``."""
    return sum(math.prod(int(s) for s in shape) for shape in shapes.values()) * itemsize(dtype)


def sae_nbytes(sae: Any) -> int:
    """Bytes of an SAE's tensors in memory (its ``state_dict``)."""
    return sum(t.numel() * t.element_size() for t in sae.state_dict().values())


def available_memory_bytes(device: str = "cpu") -> int:
    """Memory available for new allocations on ``device`` (bytes).

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (psutil elsewhere); CUDA: free device
    memory. Tests monkeypatch this function.
    """
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return 1 << 62


def estimate_bank_bytes(
    n_layers: int, d_in: int, d_sae: int, *, dtype: str = "float32", architecture: str = "jumprelu"
) -> int:
    """Bytes of ``n_layers`` SAEs: ``W_enc + W_dec + b_enc + b_dec (+ threshold)`` per layer.

    >>> round(estimate_bank_bytes(26, 2304, 65536) / 1e9, 1)  # Gemma Scope 65k, fp32
    31.4
    """
    per = 2 * d_in * d_sae + d_sae + d_in + (d_sae if architecture == "jumprelu" else 0)
    return int(n_layers) * per * ITEMSIZE[str(dtype).replace("torch.", "")]


def estimate_preset_bytes(preset: Any, n_layers: int, *, dtype: str = "float32") -> int | None:
    """Estimate a hub preset's bank from its SAE id (``width_16k``) and model width; ``None`` if unknown."""
    m = re.search(r"width_(\d+)([km]?)", preset.sae_id_template or "")
    if not m:
        return None
    # Gemma Scope names powers of two in round thousands: 16k = 2**14, 65k = 2**16, 1m = 2**20
    nominal = int(m.group(1)) * {"": 1, "k": 1000, "m": 1000**2}[m.group(2)]
    d_sae = 2 ** round(math.log2(nominal)) if m.group(2) else nominal
    try:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        d_in = int(get_pretrained_model_config(preset.model_name).d_model)
    except Exception:
        return None
    return estimate_bank_bytes(n_layers, d_in, d_sae, dtype=dtype)


def check_memory(nbytes: int, *, what: str, device: str = "cpu") -> None:
    """Raise :class:`BankTooLargeError` when ``nbytes`` exceed available memory (with the fix)."""
    avail = available_memory_bytes(device)
    if nbytes > avail:
        raise BankTooLargeError(
            f"{what} needs {format_bytes(nbytes)} but only {format_bytes(avail)} of memory is available on {device}; "
            "use `--dtype bfloat16` (halves it) or fewer layers (`--layers 0-5`)"
        )


def format_bytes(n: float) -> str:
    """``31.4 GB`` style (powers of 1000).

    >>> format_bytes(512), format_bytes(31_400_000_000)
    ('512 B', '31.4 GB')
    """
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
