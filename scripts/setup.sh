#!/usr/bin/env bash
# Create .venv (if needed) and install llmc into it. Usage: scripts/setup.sh [extra]
#   scripts/setup.sh        runtime dependencies only
#   scripts/setup.sh test   plus the test dependencies (torch CPU 2.13.0, transformers, lit, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
spec="."
[ "${1:-}" = "test" ] && spec=".[test]"
echo "==> installing llmc ($spec) into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" 2>&1 \
  | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import llmc.compiler, llmc.passes, llmc.runtime, llmc.frontends" \
  || { echo "llmc failed to import after install" >&2; exit 1; }
