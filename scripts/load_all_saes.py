#!/usr/bin/env python
"""Stage 1: resolve (or train) the SAE of every layer and write an SAE bank.

Same as ``trajectory preload``; e.g. ``python scripts/load_all_saes.py --preset offline``.
Run with ``--help`` for the options.
"""
import sys

from trajectory.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["preload", *sys.argv[1:]]))
