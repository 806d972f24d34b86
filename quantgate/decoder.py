"""Greedy decoding without transformers' per-token overhead, for the model
families whose layers are plain Llama blocks (Llama, Mistral, Qwen2, with
their sliding-window layers where the config has them).

At batch 1 a decode step of a 135M-parameter model does about 15 ms of matrix
work in int4 on this CPU; transformers' generic forward adds as much again in
Python (cache objects, mask building, hooks, output dataclasses). This decoder
runs the same modules, numerically the same way, with:

- a key/value cache allocated once per generation (no growing tensors);
- the projections that read the same input (q|k|v and gate|up) fused into one
  packed kernel call when they share a packed weight-only format (one call
  instead of three or two; the kernels compute each output column alone, so
  the result is the same as separate calls), and their bf16 outputs used as
  they are (widening bf16 to fp32 is exact, so the arithmetic is unchanged);
- rotary embedding applied to the query and key heads together;
- rotary tables computed once by the model's own rotary module;
- `F.rms_norm`, and attention as two small matmuls for one query (the
  flash-attention kernel's set-up costs more than the work at decode sizes);
  a sliding-window layer attends to its last `sliding_window` keys, as
  transformers' mask does.

`unsupported` checks every part the decoder re-implements (normalisation,
activation, projections, rotary module, attention kind) and names the first
one that differs, so a family is either run exactly (tests compare greedy
tokens and logits with transformers' on tiny random models of each family)
or declined with the reason.

Any other layer type (float `nn.Linear`, torch.ao dynamic int8, NF4, a peft
LoRA wrapper) is simply called, so every candidate quantgate makes runs here.
Other architectures fall back to `transformers.generate` (`unsupported`
says why), and the report says which runtime ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .methods.weight_only import INT4_KERNEL, INT8_KERNEL, WeightOnlyLinear, packed_matmul, packed_max_rows

FAMILIES = ("llama", "mistral", "qwen2")
RUNTIME = "quantgate decoder (preallocated KV cache, fused q|k|v and gate|up)"
HF_RUNTIME = "transformers generate"
RUNTIMES = ("auto", "quantgate", "transformers")     # what a user may ask for; auto: quantgate where it runs


def unsupported(module) -> str | None:
    """Why this model cannot use the decoder, or None if it can."""
    cfg = getattr(module, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in FAMILIES:
        return f"model type {kind!r} is not one of {', '.join(FAMILIES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    base = getattr(module, "model", None)
    if base is None or not hasattr(base, "rotary_emb") or not hasattr(module, "lm_head"):
        return "not a *ForCausalLM with model.layers, model.rotary_emb and lm_head"
    if base.embed_tokens.weight.dtype != torch.float32:
        return f"weights in {base.embed_tokens.weight.dtype} (the decoder computes in fp32)"
    for layer in base.layers:
        a, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if a is None or not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
            return "a block without separate q/k/v/o projections"
        if hasattr(a, "q_norm") or hasattr(a, "k_norm"):
            return "query/key normalisation"
        if mlp is None or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "a block without gate/up/down projections"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not hasattr(norm, "variance_epsilon") or type(norm).__name__ not in ("LlamaRMSNorm", "MistralRMSNorm",
                                                                                      "Qwen2RMSNorm"):
                return f"normalisation {type(norm).__name__}"
    if (getattr(cfg, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0) != 1.0:
        return "partial rotary embedding"
    return None


def windows(cfg) -> list[int | None]:
    """Each layer's sliding window (keys it attends to, itself included), None for global attention."""
    n, w = cfg.num_hidden_layers, getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if not w or getattr(cfg, "use_sliding_window", True) is False:
        return [None] * n
    if types is None:                  # Mistral: every layer slides
        return [w] * n
    return [w if t == "sliding_attention" else None for t in types]


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of heads x [..., seq, head_dim] (Llama's rotate-half form)."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


class _Projections:
    """Projections of one input, concatenated along the output features: one
    packed kernel call where all share a packed format (its bf16 output is
    used as is: widening it to fp32, in an add or a product with an fp32
    tensor, is exact), else one call per module."""

    def __init__(self, mods: list[torch.nn.Module]):
        self.mods = mods
        self.kernel = None
        kinds = {(m.packed_kernel, m.group_size, m.in_features)
                 if isinstance(m, WeightOnlyLinear) and m.qweight.device.type == "cpu" else None for m in mods}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind and kind[0] in (INT4_KERNEL, INT8_KERNEL):
            self.kernel, self.group_size, self.in_features = kind
            ws, ss = zip(*(m._packed_args() for m in mods))
            self.w = torch.cat(ws) if len(ws) > 1 else ws[0]
            start = 0
            for m, w in zip(mods, ws):      # each layer's packed weight becomes its rows of the fused one: no 2nd copy
                m._packed = (self.w[start:start + w.shape[0]], m._packed[1])
                start += w.shape[0]
            self.s = torch.cat(ss, dim=1 if self.kernel == INT4_KERNEL else 0) if len(ss) > 1 else ss[0]
            biases = [m.bias for m in mods]
            self.bias = None if all(b is None for b in biases) else torch.cat(
                [b if b is not None else torch.zeros(m.out_features, device=m.qweight.device)
                 for b, m in zip(biases, mods)])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        if self.kernel and x.device.type == "cpu" and b * t <= packed_max_rows(self.kernel):
            y = packed_matmul(x.reshape(b * t, -1), self.kernel, self.w, self.s, self.group_size, self.in_features)
            if self.bias is not None:
                y = y + self.bias
            for m in self.mods:
                m.calls[self.kernel] += 1
            return y.view(b, t, -1)
        if len(self.mods) == 1:
            return self.mods[0](x)
        return torch.cat([m(x) for m in self.mods], dim=-1)


class _Block:
    def __init__(self, layer):
        a, mlp = layer.self_attn, layer.mlp
        self.ln1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.ln2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        self.qkv = _Projections([a.q_proj, a.k_proj, a.v_proj])
        self.o = _Projections([a.o_proj])
        self.gate_up = _Projections([mlp.gate_proj, mlp.up_proj])
        self.inter = mlp.gate_proj.out_features
        self.down = _Projections([mlp.down_proj])
        self.scale = a.scaling


class Decoder:
    """`Decoder(model).generate(ids, n)`: greedy continuation of equal-length
    prompts ([batch, prompt] token ids), the same tokens `generate` gives."""

    def __init__(self, module: torch.nn.Module):
        why = unsupported(module)
        if why:
            raise ValueError(f"the quantgate decoder cannot run this model: {why}; use transformers' generate")
        cfg, base = module.config, module.model
        self.module = module
        self.embed, self.head = base.embed_tokens, module.lm_head
        self.norm, self.norm_eps = base.norm.weight, base.norm.variance_epsilon
        self.blocks = [_Block(layer) for layer in base.layers]
        self.windows = windows(cfg)
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rotary = base.rotary_emb
        self.cos = self.sin = None
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pos = 0

    def _tables(self, n: int, device: torch.device) -> None:
        if self.cos is None or self.cos.shape[0] < n or self.cos.device != device:
            pos = torch.arange(n, device=device)[None]
            cos, sin = self.rotary(torch.zeros(1, dtype=torch.float32, device=device), pos)
            self.cos, self.sin = cos[0].float(), sin[0].float()

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [batch, vocab] after `ids` ([batch, t]) at position self.pos."""
        b, t = ids.shape
        p0, p1 = self.pos, self.pos + t
        cos, sin = self.cos[p0:p1], self.sin[p0:p1]
        x = self.embed(ids).float()
        d = x.shape[-1]
        nh, nkv, hd = self.heads, self.kv_heads, self.head_dim
        for blk, (kc, vc), win in zip(self.blocks, self.cache, self.windows):
            h = F.rms_norm(x, (d,), blk.ln1, blk.eps1)
            y = blk.qkv(h)                                       # [b, t, (nh + 2 nkv) hd]: q | k | v
            qk = rope(y[..., :(nh + nkv) * hd].view(b, t, nh + nkv, hd).transpose(1, 2), cos, sin)
            q = qk[:, :nh]
            kc[:, :, p0:p1] = qk[:, nh:]
            vc[:, :, p0:p1] = y[..., (nh + nkv) * hd:].view(b, t, nkv, hd).transpose(1, 2)
            if t == 1:      # one query: three small ops beat the flash-attention kernel's set-up
                lo = max(0, p1 - win) if win else 0
                qg = q.reshape(b, nkv, -1, hd)                            # query heads grouped by kv head
                w = torch.softmax((qg @ kc[:, :, lo:p1].transpose(2, 3)) * blk.scale, dim=-1)
                att = (w @ vc[:, :, lo:p1]).view(b, t, -1)
            else:           # the prompt (prefill starts at position 0)
                mask = None
                if win and p1 > win:     # key k is seen from query j when j - win < k <= j
                    mask = torch.ones(t, p1, dtype=torch.bool, device=x.device).tril(p0).triu(p0 - win + 1)
                att = F.scaled_dot_product_attention(q, kc[:, :, :p1], vc[:, :, :p1], attn_mask=mask,
                                                     is_causal=mask is None, scale=blk.scale,
                                                     enable_gqa=True).transpose(1, 2).reshape(b, t, -1)
            x = x + blk.o(att)
            h = F.rms_norm(x, (d,), blk.ln2, blk.eps2)
            gu = blk.gate_up(h)
            x = x + blk.down(F.silu(gu[..., :blk.inter].float()) * gu[..., blk.inter:])
        self.pos = p1
        return self.head(F.rms_norm(x[:, -1], (d,), self.norm, self.norm_eps)).float()

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, max_len: int) -> torch.Tensor:
        """Start a generation of up to `max_len` tokens in all: logits after the prompt."""
        ids = ids.to(self.embed.weight.device)
        b = ids.shape[0]
        if ids.shape[1] > max_len:
            raise ValueError(f"the prompt has {ids.shape[1]} tokens, more than max_len={max_len}")
        self._tables(max_len, ids.device)
        shape = (b, self.kv_heads, max_len, self.head_dim)
        self.cache = [(torch.zeros(shape, device=ids.device), torch.zeros(shape, device=ids.device))
                      for _ in self.blocks]
        self.pos = 0
        return self._forward(ids)

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits after one more token per sequence ([batch, 1])."""
        if self.pos >= self.cache[0][0].shape[2]:
            raise ValueError(f"the cache holds {self.pos} tokens, its max_len: start again with a larger one")
        return self._forward(tokens.to(self.embed.weight.device))

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, eos: set[int] | None = None) -> torch.Tensor:
        """Greedy new tokens [batch, <= max_new_tokens]; a batch-1 generation
        stops after an end-of-sequence token, as `generate` does."""
        nxt = self.prefill(ids, ids.shape[1] + max_new_tokens).argmax(-1, keepdim=True)
        out = [nxt]
        while len(out) < max_new_tokens and not (ids.shape[0] == 1 and eos and int(nxt) in eos):
            nxt = self.step(nxt).argmax(-1, keepdim=True)
            out.append(nxt)
        return torch.cat(out, dim=1)


def eos_ids(module) -> set[int]:
    e = getattr(getattr(module, "generation_config", None), "eos_token_id", None)
    return set(e) if isinstance(e, (list, tuple)) else ({e} if e is not None else set())
