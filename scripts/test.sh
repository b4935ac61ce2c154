#!/usr/bin/env bash
# Set everything up on a fresh machine and run the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Headless Chromium for the browser tests (Debian's package; no browser download).
if ! command -v chromium >/dev/null 2>&1; then
    echo "[test] installing Debian's chromium"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
source scripts/setup_env.sh offline,test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# the browser tests fail (not skip) when Chromium is missing: this script installs it
export TRAJECTORY_REQUIRE_BROWSER=1
mkdir -p test-artifacts
python -m pytest -q -ra "$@"
