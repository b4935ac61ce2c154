"""Stage 1: SAEs, one per layer, kept together in a bank.

- :mod:`~trajectory.saes.bank`: :class:`SAEBank` (``layer -> sae_lens.SAE`` plus metadata);
- :mod:`~trajectory.saes.bank_format`: the bank folder on disk (manifest, verification;
  readable without torch);
- :mod:`~trajectory.saes.hub`: sae-lens releases and the hub presets;
- :mod:`~trajectory.saes.formats`: other SAE file formats, and checks that an SAE fits a model;
- :mod:`~trajectory.saes.memory`: how many bytes a bank needs, and whether they fit.
"""
from trajectory import lazy_exports

_EXPORTS = {
    "SAEBank": "trajectory.saes.bank",
    "BankEntry": "trajectory.saes.bank",
    "CorruptBankError": "trajectory.saes.bank_format",
    "BankTooLargeError": "trajectory.saes.memory",
    "read_manifest": "trajectory.saes.bank_format",
    "read_explanations": "trajectory.saes.bank_format",
    "load_sae": "trajectory.saes.formats",
    "build_sae": "trajectory.saes.formats",
    "check_sae_fits": "trajectory.saes.formats",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
