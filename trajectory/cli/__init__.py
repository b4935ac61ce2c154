"""The ``trajectory`` console command.

Each sub-command lives in its own module here with a ``register(subparsers)``
function that adds its parser and sets ``func`` (called with the parsed arguments,
returns an exit code). A sub-command parses its options, calls
:mod:`trajectory.pipeline` (or the library) and prints where the outputs went.
Modules import heavy libraries only inside ``func`` so that ``trajectory --help``
stays fast. Library code reports through the ``trajectory`` logger; :func:`main`
shows its INFO messages on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# order = order shown in --help
SUBCOMMAND_MODULES = [
    "trajectory.cli.presets",
    "trajectory.cli.preload",
    "trajectory.cli.train",
    "trajectory.cli.lora",
    "trajectory.cli.evolve",
    "trajectory.cli.graph",
    "trajectory.cli.aggregate",
    "trajectory.cli.diff",
    "trajectory.cli.steer",
    "trajectory.cli.features",
    "trajectory.cli.dashboard",
    "trajectory.cli.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trajectory",
        description="SAE feature trajectories across layers and tokens: preload SAEs -> evolve -> graph.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"trajectory {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from trajectory import __version__

    return __version__


def configure_logging() -> None:
    """INFO messages of the ``trajectory`` loggers on stderr, once."""
    logger = logging.getLogger("trajectory")
    if not any(getattr(h, "_trajectory_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        handler._trajectory_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_logging()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; outputs already written are complete (writes are atomic) and a rerun resumes",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, MemoryError, RuntimeError) as exc:
        if os.environ.get("TRAJECTORY_DEBUG", "") not in ("", "0"):
            raise
        print(f"trajectory {args.command}: error: {exc}", file=sys.stderr)
        return 1
