"""The GPTQ v1 checkpoint (AutoGPTQ's, GPTQModel's `checkpoint_format: gptq`),
what transformers (with GPTQModel or optimum) and vLLM load as `quant_method:
gptq`. Per quantized Linear `<name>`:

  <name>.qweight  int32 [K * bits / 32, N]: each output column's codes as one
                  little-endian bit stream along K
  <name>.qzeros   int32 [G, N * bits / 32]: zero points minus 1 (v1's convention),
                  a bit stream along N per group
  <name>.scales   fp16 [G, N]
  <name>.g_idx    int32 [K]: the group of each input feature (k // group_size)

with `quantization_config` in config.json and quantize_config.json. Codes and
fp16 scales are quantgate's own, so the export is exact; v1 cannot store a zero
point of 0 (it stores zero - 1 in `bits` bits), so an asymmetric layer with one
is refused. `read_weights` is the reader the GPTQModel comparison in bench/
checked against GPTQModel 7.6's own checkpoints; the tests read exports with it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..errors import QuantgateError, require

NAME = "gptq"
RUNTIMES = "transformers with GPTQModel or optimum, vLLM"
FILE = "model.safetensors"


def _words(values: torch.Tensor, bits: int) -> torch.Tensor:
    """[rows, count] small ints -> [rows, count * bits / 32] int32: one little-endian bit stream per row."""
    v = values.to(torch.int64).numpy()
    b = ((v[..., None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(v.shape[0], -1)
    return torch.from_numpy(np.packbits(b, axis=-1, bitorder="little").view("<i4").copy())


def _stream(words: torch.Tensor, count: int, bits: int) -> torch.Tensor:
    """The inverse of _words."""
    b = np.unpackbits(words.contiguous().numpy().view(np.uint8), axis=-1, bitorder="little")
    b = b[:, : count * bits].reshape(words.shape[0], count, bits)
    return torch.from_numpy((b.astype(np.int64) << np.arange(bits)).sum(-1))


def check(cfg, layers: dict, nf4: list[str]) -> None:
    if nf4:
        raise QuantgateError(f"GPTQ checkpoints have no NF4 format ({nf4[0]} is NF4): quantize with gptq-int4-g64")
    require(layers, "this artifact has no integer weight-only layers to export")
    kinds = {(m.bits, m.group_size, m.symmetric) for m in layers.values()}
    if len(kinds) > 1:
        raise QuantgateError(f"a GPTQ checkpoint has one bits/group/symmetry for every layer; this artifact mixes "
                             f"{sorted(kinds, key=str)} (e.g. a -head8 copy): export compressed-tensors instead")
    for n, m in layers.items():
        g = m.group_size or m.in_features
        if m.in_features % g or (m.in_features * m.bits) % 32 or (m.out_features * m.bits) % 32:
            width = math.gcd(*(x.in_features for x in layers.values()))
            alt = max((c for c in (32, 64, 128) if c < g and width % c == 0), default=None)
            raise QuantgateError(f"GPTQ checkpoints need the group size to divide every layer's width: {n} is "
                                 f"{m.in_features} wide, group {g}"
                                 + (f"; quantize with group {alt} (e.g. gptq-int{m.bits}-g{alt})" if alt else ""))
        if not m.symmetric and bool((m.zeros() == 0).any()):
            raise QuantgateError(f"{n} has a zero point of 0, which GPTQ's v1 checkpoint cannot store (it keeps "
                                 "zero - 1); use the symmetric recipe (drop -asym)")


def write(lm, layers: dict, folder: Path) -> dict:
    from safetensors.torch import save_file
    module, cfg = lm.module, lm.module.config
    m0 = next(iter(layers.values()))
    bits, g, sym = m0.bits, m0.group_size, m0.symmetric
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()
             if k.rsplit(".", 1)[0] not in layers}
    tied = getattr(cfg, "tie_word_embeddings", False) and "lm_head" not in layers
    if tied:
        state.pop("lm_head.weight", None)
    for name, m in layers.items():
        k = m.in_features
        state[f"{name}.qweight"] = _words(m.codes(), bits).T.contiguous()
        z = (m.zeros().to(torch.int64) - 1) & (2**bits - 1)                    # [N, G]: v1 stores zero - 1
        state[f"{name}.qzeros"] = _words(z.T, bits)
        state[f"{name}.scales"] = m.scales.T.contiguous().to(torch.float16)
        state[f"{name}.g_idx"] = (torch.arange(k) // (g or k)).to(torch.int32)
        if m.bias is not None:
            state[f"{name}.bias"] = m.bias.detach().to(torch.float16).contiguous()
    save_file(state, str(folder / FILE), metadata={"format": "pt"})
    qc = {"quant_method": "gptq", "bits": bits, "group_size": g or -1, "desc_act": False, "sym": sym,
          "checkpoint_format": "gptq", "true_sequential": True}
    d = cfg.to_dict()
    d["quantization_config"] = qc
    d["tie_word_embeddings"] = tied
    (folder / "config.json").write_text(json.dumps(d, indent=2))
    (folder / "quantize_config.json").write_text(json.dumps(qc, indent=2))
    lm.tokenizer.save_pretrained(folder)
    return {"files": sorted(p.name for p in folder.iterdir()), "layers": len(layers), "notes": []}


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """fp32 weights of every quantized layer of a GPTQ-format checkpoint (v1 stores zero - 1; v2 zero)."""
    from safetensors.torch import load_file
    folder = Path(folder)
    cfg = json.loads((folder / "quantize_config.json").read_text())
    bits = cfg["bits"]
    v1 = cfg.get("checkpoint_format", cfg.get("format", "gptq")) == "gptq"
    state = {}
    for f in folder.glob("*.safetensors"):
        state.update(load_file(str(f)))
    out = {}
    for key in [k for k in state if k.endswith(".qweight")]:
        name = key[: -len(".qweight")]
        qw, qz, sc = state[key], state[name + ".qzeros"], state[name + ".scales"].float()
        n = sc.shape[1]
        k = qw.shape[0] * 32 // bits
        g_idx = state.get(name + ".g_idx")
        q = _stream(qw.T, k, bits)                                  # [N, K]
        z = (_stream(qz, n, bits) + (1 if v1 else 0))               # [G, N]
        gi = g_idx.long() if g_idx is not None else torch.arange(k) // cfg["group_size"]
        out[name + ".weight"] = (sc[gi].T * (q - z[gi].T)).float()
    return out
