"""GPTQ quality at llama.cpp speed: quantgate's GPTQ int4 (group 32, exported
as GGUF Q4_0 from its own codes) against llama.cpp's own Q4_0 of the same
model (llama.cpp's quantizer on an F32 GGUF that quantgate writes of the fp32
model), both run by llama.cpp itself (llama-cpp-python in .venv-deploy, built
from source by bench/setup_deploy.sh): perplexity on the same held-out
windows through llama.cpp's logits, and decode tokens/s, side by side in one
run, interleaved model by model.

    make bench-deploy            # = bash bench/setup_deploy.sh; .venv/bin/python bench/deploy_gguf.py
    .venv/bin/python bench/deploy_gguf.py --samples 128 --seq-len 512 --windows 20
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantgate.artifact import save  # noqa: E402
from quantgate.data import bbc_splits  # noqa: E402
from quantgate.export import export  # noqa: E402
from quantgate.export import gguf as gguf_export  # noqa: E402
from quantgate.models import load_causal_lm  # noqa: E402
from quantgate.quantize import quantize  # noqa: E402
from quantgate.recipes import GPTQ, WeightOnly  # noqa: E402
from quantgate.tasks.causal_lm import eval_windows  # noqa: E402

DEPLOY = Path(".venv-deploy/bin/python")


def llama_cpp(*args: str) -> str:
    """Run python in .venv-deploy (where llama.cpp is) with these arguments; its stdout."""
    r = subprocess.run([str(DEPLOY), *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if not DEPLOY.is_file():
        raise SystemExit("llama.cpp is not built: run `bash bench/setup_deploy.sh` (or `make bench-deploy`)")
    lm = load_causal_lm()
    lm.verbose = False
    sp = bbc_splits()
    work = Path(tempfile.mkdtemp(prefix="quantgate-deploy-"))
    t = time.perf_counter()
    gptq = quantize(lm, GPTQ(bits=4, group_size=32, num_samples=a.samples, seq_len=a.seq_len), sp["train"])
    print(f"GPTQ int4 g32 on {a.samples} x {a.seq_len} tokens: {time.perf_counter() - t:.0f} s", flush=True)
    # The tied head: float (F32 in the file) by default, the largest matmul of a small model's decode step;
    # -head8g32 stores an int8 copy in groups of 32, i.e. Q8_0, which is how llama.cpp's own Q4_0 file holds it;
    # -head4 as Q4_0. Same GPTQ codes for the blocks in all three (the head is rounded to nearest after the pass).
    heads = {}
    for flag, hb, hg in (("-head8g32", 8, 32), ("-head4", 4, None)):
        heads[flag] = quantize(lm, GPTQ(bits=4, group_size=32, num_samples=a.samples, seq_len=a.seq_len,
                                        head_bits=hb, head_group_size=hg), sp["train"])
    rtn = quantize(lm, WeightOnly(bits=4, group_size=32))
    models = {}
    for name, q in (("quantgate gptq-int4-g32 -> Q4_0", gptq),
                    ("quantgate gptq-int4-g32-head8g32 -> Q4_0", heads["-head8g32"]),
                    ("quantgate gptq-int4-g32-head4 -> Q4_0", heads["-head4"]),
                    ("quantgate int4-g32 (RTN) -> Q4_0", rtn)):
        art = save(q, lm, work / q.name)
        export(art, "gguf", work / f"{q.name}-gguf")
        models[name] = str(work / f"{q.name}-gguf" / "model.gguf")
    (work / "f32").mkdir()
    gguf_export.write_model(lm.module, lm.tokenizer, {}, work / "f32")                         # the fp32 model as an F32 GGUF
    f32 = work / "f32" / "model.gguf"
    q40 = work / "llamacpp-q4_0.gguf"
    llama_cpp("-c", f"import llama_cpp, ctypes; p = llama_cpp.llama_model_quantize_default_params(); "
              f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0; "
              f"assert llama_cpp.llama_model_quantize({str(f32)!r}.encode(), {str(q40)!r}.encode(), ctypes.byref(p)) == 0")
    models = {"fp32 (F32 GGUF)": str(f32), "llama.cpp Q4_0 (its own quantizer)": str(q40)} | models
    windows = eval_windows(lm.tokenizer, sp["test"].texts, 512, a.windows).numpy()
    np.save(work / "windows.npy", windows)
    prompt = lm.tokenizer(sp["test"].texts[0][:200])["input_ids"]
    job = {"windows": str(work / "windows.npy"), "models": models, "prompt": prompt, "steps": a.steps,
           "threads": a.threads}
    res = json.loads(llama_cpp(str(Path(__file__).parent / "_llamacpp_job.py"), json.dumps(job)).strip().splitlines()[-1])
    ref = res["llama.cpp Q4_0 (its own quantizer)"]
    print(f"\nllama.cpp (llama-cpp-python 0.3.36), {a.threads} threads, {a.windows} windows of 512 tokens "
          f"(BBC test), decode p50 over 3 x {a.steps} steps")
    print(f"{'model':42s} {'perplexity':>10s} {'tokens/s':>9s} {'x Q4_0 speed':>12s} {'size MB':>8s}")
    for name, r in res.items():
        mb = Path(models[name]).stat().st_size / 2**20
        print(f"{name:42s} {r['perplexity']:10.2f} {r['tokens_per_s']:9.1f} {r['tokens_per_s'] / ref['tokens_per_s']:12.2f} {mb:8.1f}")
    print(json.dumps({k: {kk: v for kk, v in r.items() if kk != "window_nll"} for k, r in res.items()}))


if __name__ == "__main__":
    main()
