"""Bit packing of unsigned low-bit integers into bytes (two 4-bit values per byte)."""

from __future__ import annotations

import torch


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """[N, K] integers in 0..15 -> [N, ceil(K/2)] uint8, low nibble first."""
    u = u.to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.nn.functional.pad(u, (0, 1))
    return (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous()


def unpack_int4(p: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack_int4: [N, ceil(K/2)] uint8 -> [N, K] uint8."""
    out = torch.stack([p & 0x0F, p >> 4], dim=-1).reshape(*p.shape[:-1], -1)
    return out[..., :k]
