"""``trajectory bench evolve|real``: the benchmarks in ``benchmarks/`` of a source checkout.

``evolve``: the evolution engine versus the original loop and the naive floor, as ratios
measured in one run; ``real`` and ``dashboard``: the feature scan and the dashboard pass
versus the bare forward pass; ``edge_effects``: the batched causal test of trajectory
edges versus one forward pass per edge. The
benchmark code and its references live outside the package (``benchmarks/``,
``tests/reference/``); this command finds them beside the installed sources.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

TARGETS = ("evolve", "real", "dashboard", "edge_effects", "evolve_many")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: evolve (engine vs original loop vs floor), real / dashboard (vs forward), edge_effects, evolve_many (batched vs one at a time)",
                       description=__doc__, add_help=True, allow_abbrev=False)
    p.add_argument("target", choices=TARGETS, help="what to benchmark")
    p.add_argument("options", nargs=argparse.REMAINDER,
                   help="the benchmark's own options (see `trajectory bench evolve --help`)")
    p.set_defaults(func=run)


def source_root() -> Path:
    """The checkout holding ``benchmarks/`` and ``tests/reference/`` (a clear error when the
    package was installed without its sources)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks").is_dir() or not (root / "tests" / "reference").is_dir():
        raise FileNotFoundError(
            f"the benchmarks are not beside this installation ({root}); run `trajectory bench` from an editable "
            "install of a source checkout (`pip install -e .`), or `python benchmarks/evolve.py` there"
        )
    return root


def run(args) -> int:
    root = str(source_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"benchmarks.{args.target}")
    return int(module.main(list(args.options)) or 0)
