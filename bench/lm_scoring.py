"""What scoring a language model costs against its forward pass, with a large vocabulary.

    .venv/bin/python bench/lm_scoring.py                 # 262,144-token vocabulary, 4 windows of 512 tokens
    .venv/bin/python bench/lm_scoring.py --vocab 49152   # SmolLM2's vocabulary size

A Llama-architecture model with random weights shaped like a current small
model with a large vocabulary (hidden 640, 18 blocks, 262k tokens, tied
embedding: about 270M parameters, two thirds of them the embedding). Per
512-token window, the median of a few, side by side in one run:

- forward: the model's forward pass as transformers runs it (the reference);
- before: how a candidate was scored until now: the baseline's forward again,
  the candidate's, full-vocabulary log-softmax of both and the KL product;
- now: `tasks.causal_lm.score_windows` against the baseline's kept summaries
  (evaluate/next_token.py): the candidate's forward, its head on the scored
  positions, reduced a chunk at a time.

The candidate is the fp32 model itself, so the figures are scoring's cost
alone, not a quantized kernel's. Peak RSS over each call's start is the
kernel's high-water mark (perf.RssSampler). Then the NF4 dequantization every
NF4 layer runs per call: unpacking codes (before) against the byte lookup
(now), on this model's MLP weight, and what it does to decoding the bundled
SmolLM2 in NF4 against fp32; and decoding with each NF4 weight dequantized
once (methods/nf4.dequantized_once), how a comparison scores NF4's quality."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def before(base, cand, windows, i):
    """The scoring this replaces (quantgate until 2026-12): both models, the full distributions."""
    with torch.inference_mode():
        b = torch.log_softmax(base(input_ids=windows[i:i + 1]).logits[0, :-1].float(), dim=-1)
        c = torch.log_softmax(cand(input_ids=windows[i:i + 1]).logits[0, :-1].float(), dim=-1)
        nll = -c.gather(-1, windows[i, 1:, None]).mean().item()
        kl = (b.exp() * (b - c)).sum(-1).mean().item()
        same = (c.argmax(-1) == b.argmax(-1)).float().mean().item()
    return nll, kl, same


def timed(fn):
    from quantgate.evaluate.perf import RssSampler
    with RssSampler() as mem:
        t = time.perf_counter()
        fn()
        s = time.perf_counter() - t
    return s, mem.peak - mem.start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    a = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantgate.tasks.causal_lm import score_windows
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=256, vocab_size=a.vocab, tie_word_embeddings=True,
                      max_position_embeddings=a.context)
    model = LlamaForCausalLM(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    windows = torch.randint(0, a.vocab, (a.windows, a.context))
    print(f"model: {params / 1e6:.0f}M parameters, vocabulary {a.vocab:,}, threads {torch.get_num_threads()}; "
          f"{a.windows} windows of {a.context} tokens", flush=True)
    with torch.inference_mode():
        model(input_ids=windows[:1])                                     # warm-up
    base = score_windows(model, windows, verbose=False)                  # the baseline, once (kept summaries)
    rows = {"forward": [], "before": [], "now": []}
    for i in range(a.windows):                                           # interleaved, window by window
        with torch.inference_mode():
            rows["forward"].append(timed(lambda: model(input_ids=windows[i:i + 1]).logits))
        rows["before"].append(timed(lambda: before(model, model, windows, i)))
        one = type(base)(base.nll[i:i + 1], base.kl[i:i + 1], base.same_top[i:i + 1], base.positions[i:i + 1])
        rows["now"].append(timed(lambda: score_windows(model, windows[i:i + 1], False, one)))
    fwd = statistics.median(s for s, _ in rows["forward"])
    print("\n| per window | median s | x forward | peak RSS over its start |")
    print("| --- | --- | --- | --- |")
    for k, v in rows.items():
        s = statistics.median(x for x, _ in v)
        m = max(x for _, x in v)
        print(f"| {k} | {s:.2f} | {s / fwd:.2f} | {m / 2**20:.0f} MB |")
    kept = sum(p.idx.numel() * 4 + p.at.numel() * 4 + p.target.numel() * 12 for p in base.positions)
    print(f"\nthe baseline's kept summaries: {kept / a.windows / 2**20:.1f} MB per window; "
          f"its mass outside its top tokens: {100 * base.rest_mass:.2f}%")

    from quantgate.formats.nf4 import nf4_dequantize, nf4_dequantize_packed, nf4_quantize
    from quantgate.formats.packing import pack_bits, unpack_bits
    w = model.model.layers[0].mlp.down_proj.weight.detach()
    codes, absmax = nf4_quantize(w, 64)
    packed = pack_bits(codes, 4)
    k = w.shape[1]
    old = lambda: nf4_dequantize(unpack_bits(packed, 4, k), absmax, 64, k)      # noqa: E731
    new = lambda: nf4_dequantize_packed(packed, absmax, 64, k)                 # noqa: E731
    assert torch.equal(old(), new())
    t = {"unpack codes, then look up (before)": [], "look up packed bytes (now)": []}
    for _ in range(9):
        for name, f in zip(t, (old, new)):
            s = time.perf_counter()
            f()
            t[name].append(time.perf_counter() - s)
    x = torch.randn(1, k)
    mv = []
    for _ in range(9):
        s = time.perf_counter()
        x @ w.T
        mv.append(time.perf_counter() - s)
    print(f"\nNF4 dequantization of a {w.shape[0]}x{k} weight (per call of an NF4 layer), median of 9:")
    for name, v in t.items():
        print(f"  {name}: {statistics.median(v) * 1e3:.2f} ms")
    print(f"  for scale, that layer's fp32 matmul at one token: {statistics.median(mv) * 1e3:.3f} ms")
    nf4_decode()


def nf4_decode(rounds: int = 3, steps: int = 16) -> None:
    """Decode speed of the bundled SmolLM2 in NF4, the layers dequantizing the old way and the new,
    against fp32, in alternating rounds (tasks.causal_lm.decode_speed's own loop)."""
    from quantgate.formats.nf4 import nf4_dequantize
    from quantgate.formats.packing import unpack_bits
    from quantgate.methods.nf4 import NF4Linear, dequantized_once
    from quantgate.models import load_causal_lm
    from quantgate.quantize import quantize
    from quantgate.recipes import NF4
    from quantgate.tasks.causal_lm import _decode
    lm = load_causal_lm()
    lm.verbose = False
    q = quantize(lm, NF4()).module
    new = NF4Linear.dequantized_weight

    def old(self):
        return nf4_dequantize(unpack_bits(self.qweight, 4, self.in_features), self.block_absmax(), self.block_size,
                              self.in_features)
    ids = lm.tokenizer("The central bank said on Tuesday that", return_tensors="pt")["input_ids"]
    lat = {"fp32": [], "nf4, unpack then look up (before)": [], "nf4, packed-byte lookup (now)": [],
           "nf4, each weight dequantized once (quality scoring)": []}
    for _ in range(rounds):
        for name in lat:
            NF4Linear.dequantized_weight = old if "before" in name else new
            with dequantized_once(q if "once" in name else torch.nn.Module()):
                lat[name].extend(_decode(lm.module if name == "fp32" else q, ids, steps)[1])
    NF4Linear.dequantized_weight = new
    print(f"\nDecode at batch 1 on the bundled SmolLM2 (median ms per token, {rounds} rounds of {steps}):")
    for name, v in lat.items():
        m = statistics.median(v)
        print(f"  {name}: {m:.1f} ms/token, {1e3 / m:.1f} tokens/s")


if __name__ == "__main__":
    main()
