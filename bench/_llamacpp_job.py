"""Runs in .venv-deploy (llama-cpp-python): perplexity of token windows through
llama.cpp's own logits, and greedy decode speed, for each GGUF file given.
Prints one JSON line. Called by bench/deploy_gguf.py."""

import json
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama


def score(path: str, windows: np.ndarray, prompt: list[int], steps: int, threads: int) -> dict:
    n_ctx = max(windows.shape[1], len(prompt) + steps + 1)
    llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, logits_all=True, verbose=False)
    nll = []
    for w in windows:
        llm.reset()
        llm.eval(w.tolist())
        logits = np.asarray(llm.scores[: len(w) - 1], dtype=np.float64)
        lp = logits - logits.max(-1, keepdims=True)
        lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
        nll.append(float(-lp[np.arange(len(w) - 1), w[1:]].mean()))
    lat = []
    for _ in range(3):
        llm.reset()
        llm.eval(prompt)
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        for _ in range(steps):
            t = time.perf_counter()
            llm.eval([tok])
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            lat.append((time.perf_counter() - t) * 1e3)
    p50 = statistics.median(lat)
    return {"perplexity": float(np.exp(np.mean(nll))), "window_nll": nll, "decode_p50_ms": p50,
            "tokens_per_s": 1e3 / p50}


def main():
    a = json.loads(sys.argv[1])
    windows = np.load(a["windows"])
    out = {name: score(p, windows, a["prompt"], a["steps"], a["threads"]) for name, p in a["models"].items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
