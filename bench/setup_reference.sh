#!/usr/bin/env bash
# The GPTQ reference for bench/gptq_vs_reference.py: GPTQModel 7.6 in its own
# virtual environment (it downgrades numpy; 7.7 would pull a CUDA torch).
# It is a benchmark reference, never a quantgate dependency.
set -euo pipefail
VENV=${1:-.venv-reference}
[ -f "$VENV/.installed" ] && exit 0
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
printf 'torch==2.13.0\n' > "$VENV/constraints.txt"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -c "$VENV/constraints.txt" gptqmodel==7.6.0 gguf==0.19.0
"$VENV/bin/python" -c "import torch, gptqmodel; assert torch.__version__.startswith('2.13.0'), torch.__version__"
touch "$VENV/.installed"
