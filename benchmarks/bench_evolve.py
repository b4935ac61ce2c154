#!/usr/bin/env python
"""Evolution engine benchmark: ``python benchmarks/bench_evolve.py [options]`` =
``trajectory bench evolve [options]`` (see ``--help`` and :mod:`trajectory.bench`)."""
import sys

from trajectory.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "evolve", *sys.argv[1:]]))
