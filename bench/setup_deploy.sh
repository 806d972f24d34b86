#!/usr/bin/env bash
# llama.cpp (llama-cpp-python, built from source: ~15-20 minutes on a 2-core CPU, once) in its own
# virtual environment, .venv-deploy, for bench/deploy_gguf.py. Kept apart from .venv: it is a runtime
# quantgate hands models to, not a dependency.
set -euo pipefail
VENV=${VENV_DEPLOY:-.venv-deploy}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install -q --no-binary llama-cpp-python llama-cpp-python==0.3.36 numpy
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
