#!/usr/bin/env bash
# Installs unimodel (editable) and its dependencies into the current Python.
# Usage: bash scripts/setup.sh [test]   ("test" adds pytest, hypothesis, transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# A CPU build of torch 2.13 ships on this kind of machine; take it when torch is
# absent rather than letting pip resolve a multi-GB CUDA build. Elsewhere any
# torch >= 2.3 the user already has is kept.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.3"
fi
extra=""
[ "${1:-}" = "test" ] && extra="[test]"
"$PY" -m pip install -q -e ".${extra}"
