#!/usr/bin/env python
"""Stage 2 of the main job: ``python scripts/evolve.py [options]`` = ``trajectory evolve [options]``.

See ``trajectory evolve --help``.
"""
import sys

from trajectory.cli import main

if __name__ == "__main__":
    sys.exit(main(["evolve", *sys.argv[1:]]))
