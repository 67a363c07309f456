#!/usr/bin/env bash
# README command 1: set up, then run the main job on the built-in tiny demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/llmc demo "$@"
