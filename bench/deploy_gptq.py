"""quantgate's GPTQ export loaded by GPTQModel 7.6 itself (in .venv-reference,
bench/setup_reference.sh), as a user serving it with GPTQModel or transformers
would: every quantized layer GPTQModel unpacks must equal quantgate's own
dequantized weight bit for bit, and perplexity on the same held-out windows
through GPTQModel's CPU kernel must match quantgate's model within 0.1%.

    bash bench/setup_reference.sh          # once: GPTQModel 7.6 in .venv-reference
    .venv/bin/python bench/deploy_gptq.py [--bits 4] [--group 64] [--samples 32] [--seq-len 256] [--windows 8]

GPTQModel's CPU kernel (TorchFusedLinear) runs its matmuls in bf16 whatever the
model's dtype (it casts fp32 activations down and back), so its logits differ
from quantgate's fp32 ones by bf16 rounding; the weights are the exact check."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from quantgate.artifact import save  # noqa: E402
from quantgate.data import bbc_splits  # noqa: E402
from quantgate.export import export  # noqa: E402
from quantgate.methods.weight_only import WeightOnlyLinear  # noqa: E402
from quantgate.models import load_causal_lm  # noqa: E402
from quantgate.quantize import quantize  # noqa: E402
from quantgate.recipes import GPTQ  # noqa: E402
from quantgate.tasks.causal_lm import eval_windows  # noqa: E402

REFERENCE = ROOT / ".venv-reference" / "bin" / "python"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=8)
    a = ap.parse_args()
    if not REFERENCE.is_file():
        raise SystemExit("GPTQModel is not installed: run `bash bench/setup_reference.sh` first")
    lm = load_causal_lm()
    lm.verbose = False
    sp = bbc_splits()
    work = Path(tempfile.mkdtemp(prefix="quantgate-gptq-deploy-"))
    t = time.perf_counter()
    q = quantize(lm, GPTQ(bits=a.bits, group_size=a.group, num_samples=a.samples, seq_len=a.seq_len), sp["train"])
    print(f"{q.name} on {a.samples} x {a.seq_len} tokens: {time.perf_counter() - t:.0f} s", flush=True)
    exp = work / "gptq"
    export(save(q, lm, work / q.name), "gptq", exp)
    windows = eval_windows(lm.tokenizer, sp["test"].texts, 512, a.windows)
    np.save(work / "windows.npy", windows.numpy())
    nll = []
    with torch.inference_mode():
        for i in range(windows.shape[0]):
            logits = q.module(input_ids=windows[i:i + 1]).logits[0, :-1].float()
            nll.append(torch.nn.functional.cross_entropy(logits, windows[i, 1:]).item())
            if i == 0:
                ours0 = logits.numpy()
    r = subprocess.run([str(REFERENCE), str(ROOT / "bench" / "_gptqmodel_load_job.py"), str(exp),
                        str(work / "windows.npy"), str(work / "gptqmodel")], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    weights = np.load(work / "gptqmodel-weights.npz")
    ours_w = {n: m.dequantized_weight().float().numpy() for n, m in q.module.named_modules() if isinstance(m, WeightOnlyLinear)}
    same = sum(np.array_equal(weights[n], w) for n, w in ours_w.items() if n in weights)
    missing = sorted(set(ours_w) - set(weights.files))
    logits0 = np.load(work / "gptqmodel-logits0.npy")
    ppl_q, ppl_g = math.exp(np.mean(nll)), math.exp(np.mean(theirs["nll"]))
    print(f"GPTQModel 7.6 loaded {exp} in {theirs['load_s']:.1f} s: {theirs['layers']} quantized layers "
          f"({', '.join(theirs['kernels'])})")
    print(f"  dequantized weights bit-identical to quantgate's: {same} of {len(ours_w)} layers"
          + (f"; not loaded as quantized: {missing[:3]}" if missing else ""))
    print(f"  perplexity on {windows.shape[0]} x 512 held-out tokens: quantgate {ppl_q:.4f}, GPTQModel {ppl_g:.4f} "
          f"({(ppl_g / ppl_q - 1) * 100:+.3f}%)")
    print(f"  window 0 logits: max |difference| {np.abs(ours0 - logits0).max():.3f} (largest logit "
          f"{np.abs(ours0).max():.1f}); same top token at {(ours0.argmax(-1) == logits0.argmax(-1)).mean():.1%} of positions")
    ok = same == len(ours_w) and not missing and abs(ppl_g / ppl_q - 1) <= 1e-3
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
