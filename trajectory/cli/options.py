"""Options shared by the sub-commands: one name, one meaning, one help text everywhere."""
from __future__ import annotations

import argparse


def add_parser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command parser that never takes abbreviations (``--t`` is not ``--through``)."""
    return sub.add_parser(name, allow_abbrev=False, **kwargs)


def add_preset(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="offline", help="model + SAE preset (see `trajectory presets`; default: offline)")


def add_layers(p: argparse.ArgumentParser, default_text: str = "all layers of the model") -> None:
    p.add_argument("--layers", default=None, help=f"layers, e.g. 0-17 or 3,5,7 (default: {default_text})")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_bank(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--bank", default=None, help=f"SAE bank folder{what} (default: results/banks/<preset>)")


def add_dtype(p: argparse.ArgumentParser, help: str = "SAE dtype when opening the bank, e.g. bfloat16 (default: as stored)"
              ) -> None:
    p.add_argument("--dtype", default=None, help=help)


def add_out(p: argparse.ArgumentParser, help: str) -> None:
    """``--out`` (``--output`` is accepted too, for the analysis commands' old spelling)."""
    p.add_argument("--out", "--output", dest="out", default=None, help=help)


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def layer_list(spec: str | None, n_layers: int) -> list[int] | None:
    """``--layers`` as a list (``None`` when not given)."""
    from trajectory.presets import parse_layers

    return parse_layers(spec, n_layers) if spec else None
