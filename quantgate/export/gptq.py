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
from pathlib import Path

import numpy as np
import torch

from ..errors import QuantgateError, require
from . import hf_dir
from .hf_dir import nearest_group

NAME = "gptq"
KIND = "causal-lm"
RUNTIMES = "transformers with GPTQModel or optimum, vLLM"


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


def check(src) -> None:
    src.weights_only()
    layers, nf4 = src.layers, src.nf4
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
            alt = nearest_group(layers, g)
            raise QuantgateError(f"GPTQ checkpoints need the group size to divide every layer's width: {n} is "
                                 f"{m.in_features} wide, group {g}"
                                 + (f"; quantize with group {alt} (e.g. gptq-int{m.bits}-g{alt})" if alt else ""))
        if not m.symmetric and bool((m.zeros() == 0).any()):
            raise QuantgateError(f"{n} has a zero point of 0, which GPTQ's v1 checkpoint cannot store (it keeps "
                                 "zero - 1); use the symmetric recipe (drop -asym)")


def write(src, folder: Path) -> dict:
    lm, layers = src.model, src.layers
    m0 = next(iter(layers.values()))
    bits, g, sym = m0.bits, m0.group_size, m0.symmetric

    def layer_tensors(name, m):
        out = {f"{name}.qweight": _words(m.codes(), bits).T.contiguous(),
               f"{name}.qzeros": _words(((m.zeros().to(torch.int64) - 1) & (2**bits - 1)).T, bits),   # zero - 1
               f"{name}.scales": m.scales.T.contiguous().to(torch.float16),
               f"{name}.g_idx": (torch.arange(m.in_features) // (g or m.in_features)).to(torch.int32)}
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias.detach().to(torch.float16).contiguous()
        return out
    qc = {"quant_method": "gptq", "bits": bits, "group_size": g or -1, "desc_act": False, "sym": sym,
          "checkpoint_format": "gptq", "true_sequential": True}
    done = hf_dir.write(lm, layers, folder, layer_tensors, qc)
    (folder / "quantize_config.json").write_text(json.dumps(qc, indent=2))
    done["files"] = sorted(p.name for p in folder.iterdir())
    return done


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
