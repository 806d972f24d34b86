"""A measured dead end, kept so nobody has to build it again: GPTQ's
calibration pass written out for a Llama block in stages (q|k|v and gate|up
fused into one matmul each, Hessians accumulated chunk by chunk with BLAS's
ssyrk, rotary/SiLU/norms on chunks of windows so they stay in cache), against
quantgate's pass (transformers' block forward with a pre-hook per Linear), on
the same SmolLM2 blocks and 128 x 512 calibration tokens, int4 g128.

    .venv/bin/python bench/gptq_staged_prototype.py [--blocks 3] [--chunks 8,32,128]

Prints seconds per block for each (the reference's from its own "GPTQ pass"
note) and the ratio. The prototype does the same GPTQ work per layer
(gptq_weight, the dequantized weight, the Hessian-based output error) and
feeds each stage the outputs of the layers already quantized, as the
reference does; it does not assemble a quantized model."""

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import quantgate  # noqa: E402,F401  (process settings before torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.linalg import blas  # noqa: E402

from quantgate.data import bbc_splits  # noqa: E402
from quantgate.decoder import rope  # noqa: E402
from quantgate.methods import gptq as G  # noqa: E402
from quantgate.methods.weight_only import WeightOnlyLinear  # noqa: E402
from quantgate.models import load_causal_lm  # noqa: E402
from quantgate.recipes import GPTQ  # noqa: E402
from quantgate.calibration import lm_windows  # noqa: E402

RECIPE = GPTQ(bits=4, group_size=128, num_samples=128, seq_len=512)


class Hessian:
    """2 X^T X / n accumulated chunk by chunk (ssyrk with beta=1)."""

    def __init__(self, k):
        self.c, self.n = np.zeros((k, k), np.float32, order="F"), 0

    def add(self, x):
        x2 = x.reshape(-1, x.shape[-1])
        self.c = blas.ssyrk(1.0, x2.numpy().T, beta=1.0, c=self.c, trans=0, overwrite_c=1)
        self.n += x2.shape[0]

    def get(self):
        u = torch.from_numpy(np.ascontiguousarray(self.c)) * (2.0 / self.n)
        return torch.triu(u) + torch.triu(u, 1).T


def quantized(lin, h):
    r = RECIPE
    q, qp = G.gptq_weight(lin.weight, h, r.bits, r.group_size, r.symmetric, r.act_order, r.damp, r.block_size,
                          r.scale_search)
    dq = WeightOnlyLinear(lin, r.bits, r.group_size, r.symmetric, qp=qp, codes=q).dequantized_weight()
    G.output_error(lin.weight, dq, h)
    return dq


@torch.inference_mode()
def staged_block(layer, x, cos, sin, cfg, ch):
    at, mlp = layer.self_attn, layer.mlp
    n, seq, d = x.shape
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or d // nh
    n1, n2 = layer.input_layernorm, layer.post_attention_layernorm
    norm1 = lambda t: F.rms_norm(t, (d,), n1.weight, n1.variance_epsilon)
    norm2 = lambda t: F.rms_norm(t, (d,), n2.weight, n2.variance_epsilon)
    chunks = [slice(i, i + ch) for i in range(0, n, ch)]
    h = Hessian(d)
    for c in chunks:
        h.add(norm1(x[c]))
    hq = h.get()
    wqkv = torch.cat([quantized(at.q_proj, hq), quantized(at.k_proj, hq), quantized(at.v_proj, hq)])
    att, h = torch.empty(n, seq, nh * hd), Hessian(nh * hd)
    for c in chunks:
        y = (norm1(x[c]) @ wqkv.T)
        qk = rope(y[..., :(nh + nkv) * hd].view(-1, seq, nh + nkv, hd).transpose(1, 2), cos, sin)
        v = y[..., (nh + nkv) * hd:].view(-1, seq, nkv, hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(qk[:, :nh], qk[:, nh:], v, is_causal=True, scale=at.scaling,
                                           enable_gqa=True)
        att[c] = o.transpose(1, 2).reshape(-1, seq, nh * hd)
        h.add(att[c])
    wo = quantized(at.o_proj, h.get())
    x2, h = torch.empty_like(x), Hessian(d)
    for c in chunks:
        x2[c] = x[c] + att[c] @ wo.T
        h.add(norm2(x2[c]))
    hg = h.get()
    wgu = torch.cat([quantized(mlp.gate_proj, hg), quantized(mlp.up_proj, hg)])
    inter = mlp.gate_proj.out_features
    act, h = torch.empty(n, seq, inter), Hessian(inter)
    for c in chunks:
        gu = norm2(x2[c]) @ wgu.T
        act[c] = F.silu(gu[..., :inter]) * gu[..., inter:]
        h.add(act[c])
    wd = quantized(mlp.down_proj, h.get())
    for c in chunks:
        x2[c] += act[c] @ wd.T
    return x2


def reference_per_block(blocks: int) -> float:
    lm = load_causal_lm()
    lm.module.model.layers = lm.module.model.layers[:blocks]
    lm.module.config.num_hidden_layers = blocks
    lm.verbose = False
    q = G.apply(lm, RECIPE, bbc_splits()["train"])
    secs = float(re.search(r"GPTQ pass: ([\d.]+) s", " ".join(q.notes)).group(1))
    return secs / blocks


def staged_per_block(blocks: int, ch: int) -> float:
    lm = load_causal_lm()
    windows = lm_windows(lm.tokenizer, list(bbc_splits()["train"].texts), RECIPE.num_samples, RECIPE.seq_len)[0]
    _, layers = G.decoder_blocks(lm.module)
    x, calls = G.block_calls(lm.module, layers, windows)
    x = x.contiguous()
    cos, sin = (t[0] for t in calls[0][1]["position_embeddings"])
    t = time.perf_counter()
    for layer in layers[:blocks]:
        x = staged_block(layer, x, cos, sin, lm.module.config, ch)
    return (time.perf_counter() - t) / blocks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--chunks", default="8,32,128", help="windows per chunk, comma-separated")
    a = ap.parse_args()
    print(f"SmolLM2, first {a.blocks} blocks, {RECIPE.num_samples} x {RECIPE.seq_len} tokens, {RECIPE.name}; "
          f"{torch.get_num_threads()} threads")
    ref = [reference_per_block(a.blocks)]
    for ch in map(int, a.chunks.split(",")):
        s = staged_per_block(a.blocks, ch)
        ref.append(reference_per_block(a.blocks))       # interleaved: the machine's drift hits both
        r = float(np.median(ref))
        print(f"staged, {ch:3d} windows per chunk: {s:.2f} s per block; quantgate's pass {r:.2f} s "
              f"(median of {len(ref)} runs so far): staged / quantgate = {s / r:.2f}x", flush=True)


if __name__ == "__main__":
    main()
