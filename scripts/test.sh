#!/usr/bin/env bash
# README command 2: set up with test dependencies, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
