"""How quantizing from disk grows with the model: Llama-architecture models with
random bf16 weights built from configs (nothing to download), saved as sharded
safetensors, each quantized by `quantgate.streaming.quantize_stored` in a fresh
process: wall time and peak RSS against parameter count, and a log-log fit.

    .venv/bin/python bench/scale_lm.py                  # 0.5B, 1.1B, 3B; RTN int4 and GPTQ int4 g128 on 8 x 256 tokens
    .venv/bin/python bench/scale_lm.py --sizes 7B
    .venv/bin/python bench/scale_lm.py --sizes 7B --recipes gptq-int4-g128 --limit-gb 2   # the refusal, with its numbers
    .venv/bin/python bench/scale_lm.py --fits           # what fits on which machine: the estimates, for Llama families
    .venv/bin/python bench/scale_lm.py --sizes 7B --recipes int4-g128 --compare   # then prove it: lm compare --baseline stored
    .venv/bin/python bench/scale_lm.py --sizes 7B --recipes int4-g128 --in-compare   # both in one lm compare --recipes
    python bench/scale_lm.py --sizes 7B --recipes gptq-int4-g128 --windows 128 --seq-len 512 --device cuda  # on a GPU

The bound each run is held to (the issue's): 1.3 x (stored bytes + one block in
fp32 + calibration hidden states). Random weights make the timing and memory
real and the quality meaningless; the tokenizer is SmolLM2's (49,152 tokens).
Models are built once under --dir and reused. With --compare, each artifact is
then compared against its model kept as stored (`lm compare --baseline stored
--artifacts`, a short comparison: 2 perplexity windows of 128 tokens, 2
prompts x 4 greedy tokens, decode timing at batch 1) in a fresh process:
wall time and peak RSS, with the comparison's own memory estimate. With
--in-compare, one `lm compare --baseline stored --recipes` quantizes from disk
inside the comparison instead (the baseline resident meanwhile)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# hidden, intermediate, layers, heads, kv heads: TinyLlama-, OpenLLaMA-3B- and Llama-2-7B-shaped
SHAPES = {"0.5B": (1280, 3456, 24, 20, 4), "1.1B": (2048, 5632, 22, 32, 4), "3B": (3200, 8640, 26, 32, 32),
          "7B": (4096, 11008, 32, 32, 32)}
SHARD = 2 * 2**30


def build(size: str, root: Path) -> Path:
    """A Llama model of `size`'s shape with random bf16 weights, written shard by shard (never whole)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from quantgate.models import default_lm_dir
    d = root / f"llama-{size}-random-bf16"
    if (d / "model.safetensors.index.json").is_file():
        cfg = json.loads((d / "config.json").read_text())
        if not cfg.get("architectures"):          # built before the config named it: loadable as a causal LM
            (d / "config.json").write_text(json.dumps(cfg | {"architectures": ["LlamaForCausalLM"]}, indent=2))
        return d
    tmp = root / f".{d.name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    hidden, inter, layers, heads, kv = SHAPES[size]
    # SmolLM2's tokenizer, its files only: QUANTGATE_LM_CONFIG_DIR (as in tests/test_gpu.py), else the default model's
    tok = AutoTokenizer.from_pretrained(os.environ.get("QUANTGATE_LM_CONFIG_DIR") or default_lm_dir(),
                                        local_files_only=True)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=len(tok), max_position_embeddings=2048,
                      tie_word_embeddings=False, torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])
    hd = hidden // heads
    shapes = {"model.embed_tokens.weight": (len(tok), hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (len(tok), hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (heads * hd, hidden), p + "self_attn.k_proj.weight": (kv * hd, hidden),
                   p + "self_attn.v_proj.weight": (kv * hd, hidden), p + "self_attn.o_proj.weight": (hidden, heads * hd),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                   p + "post_attention_layernorm.weight": (hidden,)}
    import shutil
    need = 2 * sum(math.prod(s) * 2 for s in shapes.values())     # the model, and room for its artifacts
    free = shutil.disk_usage(root).free
    if free < need:
        raise SystemExit(f"building the {size} model needs about {need / 2**30:.0f} GB free under {root}, and "
                         f"{free / 2**30:.0f} GB is: free some, or pass --dir on a larger disk")
    g = torch.Generator().manual_seed(0)
    shard, size_now, n, weight_map = {}, 0, 0, {}

    def flush():
        nonlocal shard, size_now, n
        if shard:
            n += 1
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, size_now = {}, 0
    for k, s in shapes.items():
        t = torch.ones(s, dtype=torch.bfloat16) if len(s) == 1 else \
            (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
        shard[k] = t
        size_now += t.numel() * 2
        if size_now >= SHARD:
            flush()
    flush()
    total = sum(math.prod(s) * 2 for s in shapes.values())
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(d)
    return d


JOB = """
import json, sys, time, psutil
from quantgate.data import bbc_splits
from quantgate.recipes import Recipe
from quantgate.streaming import quantize_stored
import torch
model, spec, out, windows, seq_len, limit, device = sys.argv[1:8]
r = Recipe.parse(spec)
if r.method == "gptq":
    r = Recipe.from_dict(r.to_dict() | {"num_samples": int(windows), "seq_len": int(seq_len), "device": device})
cal = bbc_splits()["train"] if r.needs_calibration else None
before = psutil.Process().memory_info().rss
t = time.perf_counter()
try:
    quantize_stored(model, r, cal, out, verbose=False, available=int(float(limit) * 2**30) if float(limit) else None)
except Exception as e:
    print(json.dumps({"refused": str(e)}))
    sys.exit(0)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))     # this process's own peak RSS
gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0    # the GPU's peak, where one ran
print(json.dumps({"seconds": time.perf_counter() - t, "before": before, "peak": int(hwm.split()[1]) * 1024, "gpu": gpu}))
"""


COMPARE = """
import json, sys, time
from quantgate.cli import main
t = time.perf_counter()
rc = main(["lm", "compare", "--model", sys.argv[1], "--baseline", "stored", sys.argv[4], sys.argv[2], "--context", "128",
           "--windows", "2", "--prompts", "2", "--new-tokens", "4", "--batch-sizes", "1", "--decode-steps", "2",
           "--samples", sys.argv[5], "--seq-len", sys.argv[6], "--out", sys.argv[3]])
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
plan = json.load(open(sys.argv[3] + "/comparison.json"))["environment"]["memory_plan"]
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t, "peak": int(hwm.split()[1]) * 1024, "plan": plan}))
"""


def _env() -> dict:
    """The jobs' environment: this checkout first on the path, then whatever the caller put there."""
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run(model: Path, spec: str, out: Path, windows: int, seq_len: int, limit_gb: float, compare: bool = False,
        device: str = "auto") -> dict:
    import shutil
    shutil.rmtree(out, ignore_errors=True)     # bench outputs only, made below --dir by this script
    env = _env()
    r = subprocess.run([sys.executable, "-c", JOB, str(model), spec, str(out), str(windows), str(seq_len),
                        str(limit_gb), device], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if compare and "refused" not in res:
        res["compare"] = run_compare(model, ["--artifacts", str(out)], out.parent / "compare", windows, seq_len)
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_compare(model: Path, candidates: list[str], report: Path, windows: int, seq_len: int) -> dict:
    """`lm compare --baseline stored` with `candidates` (--artifacts DIR, or --recipes SPEC: quantized
    from disk inside the comparison) in a fresh process: its exit code, wall time, peak RSS and plan."""
    import shutil
    shutil.rmtree(report, ignore_errors=True)
    c = subprocess.run([sys.executable, "-c", COMPARE, str(model), candidates[1], str(report), candidates[0],
                        str(windows), str(seq_len)], capture_output=True, text=True,
                       env=_env())
    if c.returncode:
        raise SystemExit(c.stderr[-3000:])
    print(c.stdout.rsplit("\n{", 1)[0][-4000:], flush=True)      # the comparison's table
    res = json.loads(c.stdout.strip().splitlines()[-1])
    shutil.rmtree(report, ignore_errors=True)
    return res


def print_compare(c: dict, how: str) -> None:
    print(f"  lm compare --baseline stored {how}: exit {c['rc']}, {c['seconds']:.0f} s, peak RSS "
          f"{c['peak'] / 2**30:.2f} GB; estimated {c['plan']['total'] / 2**30:.2f} GB ("
          + "; ".join(f"{k} {v / 2**30:.2f} GB" for k, v in c["plan"]["parts"].items()) + ")", flush=True)


# hidden, intermediate, layers, heads, kv heads, vocabulary: the shapes people quantize
FAMILIES = {"7B (Llama-2)": (4096, 11008, 32, 32, 32, 32000), "8B (Llama-3, 128k vocabulary)": (4096, 14336, 32, 32, 8, 128256),
            "13B (Llama-2)": (5120, 13824, 40, 40, 40, 32000), "34B (CodeLlama)": (8192, 22016, 48, 64, 8, 32000),
            "70B (Llama-2)": (8192, 28672, 80, 64, 8, 32000)}


def fits_table(machines=(8, 16, 24, 32, 64), gpus=(16, 24, 40, 48, 80, 141)) -> None:
    """What fits on which machine: streaming.estimate for each family's shapes (no weights built),
    the smallest machine (90% of its memory available) that holds each job, and GPTQ's windows
    per block forward there."""
    import tempfile
    import types
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantgate.errors import QuantgateError
    from quantgate.methods.gptq import fitting_chunk, gpu_bytes
    from quantgate.recipes import Recipe
    from quantgate.streaming import _check_fits, estimate

    def smallest(sizes, fit, windows: int) -> str:
        """The smallest of `sizes` (GB, 90% of it available) where fit(available) -> (bytes, chunk) holds the job."""
        for gb in sizes:
            got = fit(int(gb * 2**30 * 0.9))
            if got:
                need, chunk = got
                return f"{need / 2**30:.1f} GB: fits {gb} GB" + (f" ({chunk} at a time)" if chunk < windows else "")
        return f"over {sizes[-1]} GB"

    print("| model | stored (bf16) | RTN int4-g128 | GPTQ, 8 x 256 tokens | GPTQ, 128 x 512 tokens | GPTQ, 128 x 2048 tokens "
          "| the same, -bf16states | GPTQ on a GPU, 128 x 2048 tokens: GPU memory |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    gptq, half = Recipe.parse("gptq-int4-g128"), Recipe.parse("gptq-int4-g128-bf16states")
    for name, (h, i, n, heads, kv, vocab) in FAMILIES.items():
        d = tempfile.mkdtemp(prefix="quantgate-fits-")
        cfg = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                          num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=False)
        cfg.save_pretrained(d)
        hd = h // heads
        t = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
        for b in range(n):
            p = f"model.layers.{b}."
            t |= {p + "self_attn.q_proj.weight": (heads * hd, h), p + "self_attn.k_proj.weight": (kv * hd, h),
                  p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, heads * hd),
                  p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i)}
        store = types.SimpleNamespace(path=d, tensors={k: ("BF16", 0, v) for k, v in t.items()})

        def host(recipe, w, sl):
            def fit(avail):
                try:
                    e = _check_fits(store, recipe, w, sl, avail)
                except QuantgateError:
                    return None
                return e["total"], e["chunk"]
            return fit
        with torch.device("meta"):                 # shapes only: nothing allocated
            skeleton = LlamaForCausalLM(cfg)
        windows = torch.empty(128, 2048, device="meta")

        def gpu(avail):
            chunk, need = fitting_chunk(128, lambda c: gpu_bytes(skeleton, windows, c), avail)
            return (need, chunk) if chunk else None
        cells = [f"{estimate(store, Recipe.parse('int4-g128'))['total'] / 2**30:.1f} GB"]
        cells += [smallest(machines, host(r, w, sl), w)
                  for w, sl, r in ((8, 256, gptq), (128, 512, gptq), (128, 2048, gptq), (128, 2048, half))]
        cells.append(smallest(gpus, gpu, 128))
        stored = sum(math.prod(v) for v in t.values()) * 2
        print(f"| {name} | {stored / 2**30:.1f} GB | " + " | ".join(cells) + " |")
        import shutil
        shutil.rmtree(d)                        # its own temporary config folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0.5B,1.1B,3B")
    ap.add_argument("--recipes", default="int4-g128,gptq-int4-g128")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dir", default="/tmp/quantgate-scale")
    ap.add_argument("--limit-gb", type=float, default=0.0, help="pretend only this much memory is available")
    ap.add_argument("--device", default="auto", help="where GPTQ computes: auto (a CUDA GPU when present), cpu, cuda")
    ap.add_argument("--fits", action="store_true", help="only print what fits on which machine (estimates, no runs)")
    ap.add_argument("--compare", action="store_true", help="then compare each artifact against its model as stored")
    ap.add_argument("--in-compare", action="store_true",
                    help="one command instead: lm compare --baseline stored --recipes, quantizing inside the comparison")
    a = ap.parse_args()
    if a.fits:
        return fits_table()
    from quantgate.streaming import Stored
    root = Path(a.dir)
    rows = []
    for size in a.sizes.split(","):
        t = time.perf_counter()
        model = build(size, root)
        s = Stored(model)
        hidden, inter, layers, _, _ = SHAPES[size]
        params = sum(math.prod(sh) for _, _, sh in s.tensors.values())
        block = sum(math.prod(sh) for n, (_, _, sh) in s.tensors.items() if ".layers.0." in n) * 4
        print(f"{size}: {params / 1e9:.2f}B parameters, {s.nbytes() / 2**30:.2f} GB stored "
              f"(built or found in {time.perf_counter() - t:.0f} s)", flush=True)
        for spec in a.recipes.split(","):
            if a.in_compare:
                print_compare(run_compare(model, ["--recipes", spec], root / "compare", a.windows, a.seq_len),
                              f"--recipes {spec} (quantized inside it)")
                continue
            res = run(model, spec, root / "out", a.windows, a.seq_len, a.limit_gb, a.compare, a.device)
            gptq = spec.startswith("gptq")
            calib = a.windows * a.seq_len * hidden * 4 * 2 if gptq else 0
            bound = 1.3 * (s.nbytes() + block + calib)
            if "refused" in res:
                print(f"  {spec}: refused: {res['refused']}", flush=True)
                continue
            rows.append({"size": size, "params": params, "stored": s.nbytes(), "recipe": spec, "tokens":
                         a.windows * a.seq_len if gptq else 0, **res, "bound": bound})
            print(f"  {spec}: {res['seconds']:.0f} s, peak RSS {res['peak'] / 2**30:.2f} GB "
                  f"({(res['peak'] - res['before']) / 2**30:.2f} GB over the process's start); bound "
                  f"{bound / 2**30:.2f} GB: {res['peak'] / bound:.2f} of it"
                  + (f"; GPU peak {res['gpu'] / 2**30:.2f} GB" if res.get("gpu") else ""), flush=True)
            if "compare" in res:
                print_compare(res["compare"], "--artifacts")
    print("\n| model | parameters | stored (bf16) | recipe | calibration tokens | wall | peak RSS | peak / bound |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['params'] / 1e9:.2f}B | {r['stored'] / 2**30:.2f} GB | {r['recipe']} | "
              f"{r['tokens'] or '-'} | {r['seconds']:.0f} s | {r['peak'] / 2**30:.2f} GB | {r['peak'] / r['bound']:.2f} |")
    import numpy as np
    for spec in a.recipes.split(","):
        pts = [r for r in rows if r["recipe"] == spec]
        if len(pts) >= 2:
            x = np.log([r["params"] for r in pts])
            ft = np.polyfit(x, np.log([r["seconds"] for r in pts]), 1)[0]
            fm = np.polyfit(x, np.log([r["peak"] - r["before"] for r in pts]), 1)[0]
            print(f"{spec}: time grows as parameters^{ft:.2f}, peak memory (over the start) as parameters^{fm:.2f}")


if __name__ == "__main__":
    main()
