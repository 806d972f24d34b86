"""4-bit NormalFloat (Dettmers et al., QLoRA 2023) and double quantization.

NF4's 16 values are quantiles of a standard normal, scaled to [-1, 1] with an
exact zero: information-theoretically optimal for normally distributed
weights. A weight block of `block_size` values stores its absmax; each value
stores the index of the nearest NF4 value to w / absmax.

Double quantization stores the absmax values themselves in int8: the mean is
subtracted, and each block of `dq_block_size` absmax values gets one fp32
scale. Per weight that costs 8/64 + 32/(64*256) bits instead of 32/64.
"""

from __future__ import annotations

import math

import torch

# The NF4 code book, as published with QLoRA (bitsandbytes' values).
NF4_VALUES = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


def _blocks(w: torch.Tensor, block_size: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K / b), b], zero-padding the last block."""
    n, k = w.shape
    nb = math.ceil(k / block_size)
    return torch.nn.functional.pad(w, (0, nb * block_size - k)).view(n, nb, block_size)


def nf4_quantize(w: torch.Tensor, block_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, K] (uint8, 0..15) and absmax [N, blocks] (fp32) for weight [N, K]."""
    w = w.detach().float()
    b = _blocks(w, block_size)
    absmax = b.abs().amax(dim=-1).clamp(min=torch.finfo(torch.float32).tiny)
    x = b / absmax[..., None]
    v = NF4_VALUES.to(w.device)
    mids = (v[1:] + v[:-1]) / 2                     # nearest value by its midpoints
    codes = torch.bucketize(x, mids).to(torch.uint8)
    return codes.view(w.shape[0], -1)[:, : w.shape[1]], absmax


def nf4_dequantize(codes: torch.Tensor, absmax: torch.Tensor, block_size: int, k: int) -> torch.Tensor:
    n = codes.shape[0]
    vals = NF4_VALUES.to(codes.device)[codes.long()]
    b = _blocks(vals, block_size)
    return (b * absmax[..., None]).view(n, -1)[:, :k]


# Both NF4 values of every packed byte (low nibble first, as formats/packing.py packs them):
# a lookup per byte dequantizes without unpacking the nibbles or widening the codes to int64.
_PAIRS = torch.stack([NF4_VALUES[torch.arange(256) & 15], NF4_VALUES[torch.arange(256) >> 4]], dim=-1)


def nf4_dequantize_packed(packed: torch.Tensor, absmax: torch.Tensor, block_size: int, k: int) -> torch.Tensor:
    """nf4_dequantize of pack_bits(codes, 4), [N, ceil(K/2)] uint8, bit for bit, 2x faster (bench/lm_scoring.py):
    one embedding lookup of each byte's two values, then the blocks' scales."""
    n = packed.shape[0]
    vals = torch.nn.functional.embedding(packed.int(), _PAIRS.to(packed.device)).view(n, -1)[:, :k]
    return (_blocks(vals, block_size) * absmax[..., None]).view(n, -1)[:, :k]


def double_quantize(absmax: torch.Tensor, dq_block_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 codes (same shape), fp32 scale per block of dq_block_size values, fp32 mean."""
    flat = absmax.reshape(-1).float()
    mean = flat.mean()
    x = flat - mean
    nb = math.ceil(len(x) / dq_block_size)
    xb = torch.nn.functional.pad(x, (0, nb * dq_block_size - len(x))).view(nb, dq_block_size)
    scale = (xb.abs().amax(dim=-1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.round(xb / scale[:, None]), -127, 127).to(torch.int8)
    return q.view(-1)[: len(x)].view(absmax.shape), scale, mean.reshape(1)


def double_dequantize(q: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, dq_block_size: int) -> torch.Tensor:
    flat = q.reshape(-1).float()
    nb = scale.numel()
    xb = torch.nn.functional.pad(flat, (0, nb * dq_block_size - len(flat))).view(nb, dq_block_size)
    return ((xb * scale[:, None]).view(-1)[: len(flat)] + mean).view(q.shape)
