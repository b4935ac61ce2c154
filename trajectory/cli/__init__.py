"""The ``trajectory`` console command.

Each sub-command lives in its own module here with a ``register(subparsers)``
function that adds its parser and sets ``func`` (called with the parsed
arguments, returns an exit code). Modules import heavy libraries only inside
``func`` so that ``trajectory --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# order = order shown in --help
SUBCOMMAND_MODULES = [
    "trajectory.cli.presets",
    "trajectory.cli.preload",
    "trajectory.cli.evolve",
    "trajectory.cli.graph",
    "trajectory.cli.analysis",
    "trajectory.cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trajectory",
        description="SAE feature trajectories across layers and tokens: preload SAEs -> evolve -> graph.",
    )
    parser.add_argument("--version", action="version", version=f"trajectory {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # sub-command not built yet
                continue
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from trajectory import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; outputs already written are complete (writes are atomic) and a rerun resumes", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, MemoryError, RuntimeError) as exc:
        if getattr(args, "debug", False) or _debug():
            raise
        print(f"trajectory {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _debug() -> bool:
    import os

    return os.environ.get("TRAJECTORY_DEBUG", "") not in ("", "0")
