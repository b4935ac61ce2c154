#!/usr/bin/env bash
# Create (or reuse) the virtual environment in .venv and install the package.
#
# torch is installed FIRST: a bare `torch` requirement would pull several GB of
# CUDA wheels. Override the spec with TRAJECTORY_TORCH_SPEC (e.g. a CUDA build).
# Usage: source scripts/setup_env.sh [extras]   (default extras: offline,test)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-offline,test}"
PY="${PYTHON:-python3}"
VENV="${TRAJECTORY_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
STAMP="$VENV/.trajectory-installed"
HASH="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) ${TRAJECTORY_TORCH_SPEC:-}"
# The stamp holds the install's hash on line 1 and its extras on line 2. Asking for a
# subset of what is installed changes nothing (run.sh after test.sh does not reinstall);
# otherwise install the union, so the two commands never undo each other.
HAVE_HASH="$( [ -f "$STAMP" ] && sed -n 1p "$STAMP" || true)"
HAVE_EXTRAS="$( [ -f "$STAMP" ] && sed -n 2p "$STAMP" || true)"
[ "$HAVE_HASH" = "$HASH" ] || HAVE_EXTRAS=""
ALL="$(printf '%s\n' ${HAVE_EXTRAS//,/ } ${EXTRAS//,/ } | sort -u | paste -sd, -)"
if [ -n "$HAVE_EXTRAS" ] && [ "$ALL" = "$(printf '%s\n' ${HAVE_EXTRAS//,/ } | sort -u | paste -sd, -)" ]; then
    echo "[setup] environment up to date ($VENV, extras: $HAVE_EXTRAS)"
else
    python -m pip install --quiet --upgrade pip
    if ! python -c "import torch" 2>/dev/null || [ -n "${TRAJECTORY_TORCH_SPEC:-}" ]; then
        echo "[setup] installing ${TRAJECTORY_TORCH_SPEC:-torch==2.13.0}"
        python -m pip install --quiet "${TRAJECTORY_TORCH_SPEC:-torch==2.13.0}"
    fi
    echo "[setup] installing trajectory[$ALL]"
    python -m pip install --quiet -e "$ROOT[$ALL]"
    printf '%s\n%s\n' "$HASH" "$ALL" > "$STAMP"
fi
