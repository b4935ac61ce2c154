#!/usr/bin/env python
"""Stage 3 of the main job: ``python scripts/graph_generator.py [options]`` = ``trajectory graph [options]``.

See ``trajectory graph --help``.
"""
import sys

from trajectory.cli import main

if __name__ == "__main__":
    sys.exit(main(["graph", *sys.argv[1:]]))
