#!/usr/bin/env bash
# The main job on the `offline` preset, from a fresh machine:
#   stage 1 preload (train/open the SAE bank) -> stage 2 evolve -> stage 3 graph.
# Extra arguments go to every stage's defaults via environment variables:
#   TRAJECTORY_PROMPT, TRAJECTORY_OUT (default results/offline/<prompt words>-<hash>).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup_env.sh offline
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PROMPT="${TRAJECTORY_PROMPT:-The final correct answer: Max, Mark and Smith are in the empty dark room. Smith left. Mark gave flashlight to}"
# one folder per prompt (results/offline/<prompt words>-<hash>/), so another prompt never replaces this one
OUT="${TRAJECTORY_OUT:-$(python -c 'import sys; from trajectory.pipeline import default_evolve_out; print(default_evolve_out("offline", sys.argv[1]).parent)' "$PROMPT")}"
python scripts/load_all_saes.py --preset offline
python scripts/evolve.py --preset offline --prompt "$PROMPT" --out "$OUT/evolution.safetensors"
python scripts/graph_generator.py "$OUT/evolution.safetensors" --out "$OUT/graph"
