"""Runs inside the reference venv (bench/setup_reference.sh): GPTQModel loads a
quantgate GPTQ export as it is, dequantizes every quantized layer with its own
unpacking (weights saved for the caller to compare), then scores the token
windows with its CPU kernel. Prints one JSON line. Called by
bench/deploy_gptq.py; not imported by quantgate."""

import json
import sys
import time

import numpy as np
import torch


def main():
    folder, windows, out = sys.argv[1:4]
    from gptqmodel import GPTQModel
    t = time.perf_counter()
    model = GPTQModel.load(folder, device="cpu", dtype=torch.float32)
    load_s = time.perf_counter() - t
    hf = model.model
    layers = {n: m for n, m in hf.named_modules() if hasattr(m, "qweight") and hasattr(m, "dequantize_weight")}
    with torch.inference_mode():                  # before the first forward repacks them for the kernel
        weights = {n: m.dequantize_weight().t().float().numpy() for n, m in layers.items()}
    np.savez(out + "-weights.npz", **weights)
    w = torch.from_numpy(np.load(windows))
    nll = []
    with torch.inference_mode():
        for i in range(w.shape[0]):
            logits = hf(input_ids=w[i:i + 1]).logits[0, :-1].float()
            nll.append(torch.nn.functional.cross_entropy(logits, w[i, 1:]).item())
            if i == 0:
                np.save(out + "-logits0.npy", logits.numpy())
    kernels = sorted({type(m).__name__ for m in layers.values()})
    print(json.dumps({"nll": nll, "kernels": kernels, "layers": len(layers), "load_s": load_s}))


if __name__ == "__main__":
    main()
