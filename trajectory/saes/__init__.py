"""Stage 1: SAEs, one per layer, kept together in a bank.

- :mod:`~trajectory.saes.bank`: :class:`SAEBank` (``layer -> sae_lens.SAE`` plus metadata);
- :mod:`~trajectory.saes.bank_format`: the bank folder on disk (manifest, verification;
  readable without torch);
- :mod:`~trajectory.saes.hub`: sae-lens releases and the hub presets;
- :mod:`~trajectory.saes.formats`: other SAE file formats, and checks that an SAE fits a model;
- :mod:`~trajectory.saes.memory`: how many bytes a bank needs, and whether they fit.
"""
from trajectory import lazy_exports

_MODULES = {
    "bank": ("SAEBank", "BankEntry"),
    "bank_format": ("CorruptBankError", "read_manifest", "read_explanations", "bank_lock"),
    "memory": ("BankTooLargeError",),
    "formats": ("load_sae", "build_sae", "check_sae_fits"),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _MODULES)
