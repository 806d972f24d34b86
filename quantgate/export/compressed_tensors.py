"""The `pack-quantized` format of the compressed-tensors package: what
transformers and vLLM load for int weight-only models.

Per quantized Linear `<name>`:
  <name>.weight_packed     int32 [N, ceil(K * bits / 32)]: signed codes + 2^(bits-1), packed densely
  <name>.weight_scale      [N, K / group_size] (or [N, 1] per channel)
  <name>.weight_zero_point int32, packed along the output dimension (asymmetric only), signed
  <name>.weight_shape      int64 [2]: (N, K)
and `quantization_config` in config.json (quant_method compressed-tensors,
format pack-quantized, one config group per distinct weight format).

Exact: compressed-tensors dequantizes (q - zp) * scale with signed codes, which
is quantgate's (u - z) * s with both shifted by 2^(bits-1); scales are stored in
fp32 (quantgate keeps fp16 scales: widening is exact, and a product of an fp16
scale and a small integer is exact in fp32 but not in fp16)."""

from __future__ import annotations

import torch

from ..errors import QuantgateError, require
from . import hf_dir
from .hf_dir import nearest_group

NAME = "compressed-tensors"
KIND = "causal-lm"
RUNTIMES = "transformers (AutoModelForCausalLM.from_pretrained), vLLM"


def check(src) -> None:
    src.weights_only()
    layers, nf4 = src.layers, src.nf4
    if nf4:
        raise QuantgateError(f"compressed-tensors has no NF4 format ({nf4[0]} is NF4): quantize with int4-g64 "
                             "or gptq-int4-g64")
    require(layers, "this artifact has no integer weight-only layers to export")
    asym = [n for n, m in layers.items() if not m.symmetric]
    if asym:
        raise QuantgateError(f"{asym[0]} is asymmetric: transformers 5.23 with compressed-tensors 0.20 cannot load "
                             "asymmetric pack-quantized weights (it checks the packed zero points against the "
                             "unpacked shape); export a symmetric recipe (drop -asym)")
    bad = [(n, m) for n, m in layers.items() if m.group_size and m.in_features % m.group_size]
    if bad:
        n, m = bad[0]
        g = nearest_group(layers, m.group_size)
        raise QuantgateError(
            f"compressed-tensors (and vLLM's kernels) need the group size to divide every layer's width: "
            f"{n} is {m.in_features} wide, group {m.group_size}"
            + (f"; quantize with group {g} (e.g. int{m.bits}-g{g})" if g else "; quantize per channel (no -g)"))


def write(src, folder) -> dict:
    """A directory `AutoModelForCausalLM.from_pretrained` loads as it is."""
    return hf_dir.write(src.model, src.layers, folder, layer_tensors, quantization_config(src.layers))


def layer_tensors(name: str, m) -> dict[str, torch.Tensor]:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    off = 2 ** (m.bits - 1)
    codes = (m.codes().to(torch.int16) - off).to(torch.int8)
    out = {f"{name}.weight_packed": pack_to_int32(codes, m.bits),
           f"{name}.weight_scale": m.scales.float().contiguous(),
           f"{name}.weight_shape": torch.tensor([m.out_features, m.in_features], dtype=torch.int64)}
    if not m.symmetric:
        zp = (m.zeros().to(torch.int16) - off).to(torch.int8)
        out[f"{name}.weight_zero_point"] = pack_to_int32(zp, m.bits, packed_dim=0)
    if m.bias is not None:
        out[f"{name}.bias"] = m.bias.detach().float().contiguous()
    return out


def quantization_config(layers: dict) -> dict:
    """One config group per distinct (bits, group size, symmetry), targeting its layers by name."""
    import compressed_tensors
    groups: dict[tuple, list[str]] = {}
    for name, m in layers.items():
        groups.setdefault((m.bits, m.group_size, m.symmetric), []).append(name)
    cfg = {}
    for i, ((bits, g, sym), names) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        cfg[f"group_{i}"] = {
            "targets": names, "format": "pack-quantized", "input_activations": None, "output_activations": None,
            "weights": {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "group" if g else "channel",
                        "group_size": g, "dynamic": False, "actorder": None, "observer": "minmax"}}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": cfg, "ignore": [], "kv_cache_scheme": None, "version": compressed_tensors.__version__}
