"""The checks that need a CUDA GPU, as one script for a borrowed GPU machine
(CI has none). Run from the repository root:

    python bench/device_check.py [--minilm DIR] [--scale 7B]

(on a bare GPU machine: `bash bench/gpu_checks.sh prepare` here, then `bash
bench/gpu_checks.sh run` there, which runs this with --scale 7B).

1. tests/test_gpu.py (GPTQ block by block on the GPU against the CPU run,
   QLoRA in fp16 with a gradient scaler, quantized layers and the decoder on
   the GPU, GPTQ from bf16 shards on disk with one block at a time on the GPU);
2. GPTQ int4 g128 on SmolLM2's full architecture (30 blocks, random weights:
   the time does not depend on them) with 128 x 512 calibration tokens, on the
   GPU: the wall time of the job that takes minutes on a 2-core CPU;
3. with --minilm (the default classifier's base directory): fine-tune on CUDA
   (fp16 + gradient scaler), then QAT on CUDA in fp16, each loss and accuracy;
4. with --scale SIZE (bench/scale_lm.py's sizes, 7B: Llama-2-7B's shape, random
   bf16 weights, built on disk first): GPTQ int4 g128 from disk on the GPU with
   128 x 512 calibration tokens, one block at a time there: wall, peak RSS, GPU peak.
"""

import argparse
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def gptq_full_size():
    from quantgate.data import bbc_splits
    from quantgate.models import causal_lm_from_config, default_lm_dir
    from quantgate.quantize import quantize
    from quantgate.recipes import GPTQ
    lm = causal_lm_from_config(os.environ.get("QUANTGATE_LM_CONFIG_DIR") or default_lm_dir())
    cfg = lm.module.config
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    q = quantize(lm, GPTQ(bits=4, group_size=128, device="cuda"), bbc_splits()["train"])
    print(f"GPTQ int4 g128, 128 x 512 calibration, {cfg.num_hidden_layers} blocks of SmolLM2's shape on "
          f"{torch.cuda.get_device_name(0)}: {time.perf_counter() - t:.1f} s (quantize's own clock {q.seconds:.1f} s), "
          f"GPU peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB, {len(q.quantized_layers)} layers", flush=True)


def classifier_on_cuda(minilm: str):
    import json
    from quantgate.data import bbc_splits
    from quantgate.evaluate.metrics import accuracy
    from quantgate.finetune import finetune
    from quantgate.models import load_classifier
    from quantgate.quantize import quantize
    from quantgate.recipes import QAT
    from quantgate.tasks.classification import predict
    s = bbc_splits()
    t = time.perf_counter()
    out = finetune(s["train"], base=minilm, out="/tmp/ft-cuda", verbose=False)
    info = json.loads((out / "train_info.json").read_text())
    m = load_classifier(out)
    p = predict(m.module, m, s["test"], verbose=False)
    print(f"fine-tune on CUDA: {info['precision']} on {info['device']}, loss {info['loss_first']:.3f} -> "
          f"{info['loss_last']:.3f}, test accuracy {accuracy(p.labels, p.pred):.4f}, {time.perf_counter() - t:.0f} s",
          flush=True)
    t = time.perf_counter()
    q = quantize(m, QAT(steps=40, device="cuda", precision="fp16"), s["calibration"], train=s["train"])
    c = predict(q.module, m, s["test"], verbose=False)
    losses = q.train_losses
    print(f"QAT on CUDA in fp16: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, int8 test accuracy "
          f"{accuracy(c.labels, c.pred):.4f} (float {accuracy(p.labels, p.pred):.4f}), {time.perf_counter() - t:.0f} s; "
          f"notes: {q.notes[0]}", flush=True)


def from_disk(size: str):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "scale_lm.py"), "--sizes", size, "--recipes",
                        "gptq-int4-g128", "--windows", "128", "--seq-len", "512", "--device", "cuda"], cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"bench/scale_lm.py --sizes {size} --device cuda exited {r.returncode}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm")
    ap.add_argument("--scale", help="also GPTQ a model of this size from disk on the GPU (bench/scale_lm.py: 7B)")
    a = ap.parse_args()
    print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}", flush=True)
    rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"], cwd=ROOT)
    for step in (gptq_full_size, lambda: a.minilm and classifier_on_cuda(a.minilm),
                 lambda: a.scale and from_disk(a.scale)):
        try:
            step()
        except Exception as e:         # report and go on: one failure must not hide the other checks
            import traceback
            traceback.print_exc()
            print(f"FAILED: {e}", flush=True)
            rc = rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
