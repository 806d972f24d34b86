"""Dense bit packing of unsigned low-bit integers into bytes.

Values are laid out little-endian in a bit stream along the last axis: value i
occupies bits [i*b, (i+1)*b). Two 4-bit values per byte (low nibble first),
four 2-bit values per byte, eight 3-bit values per three bytes; 8-bit is a copy.
The last axis is zero-padded to a whole number of bytes."""

from __future__ import annotations

import math

import torch

from ..errors import require

PACK_BITS = (2, 3, 4, 8)


def _per_chunk(bits: int) -> int:
    """Values per chunk of whole bytes: 8 / gcd(bits, 8)."""
    return 8 // math.gcd(bits, 8)


def packed_width(k: int, bits: int) -> int:
    n = _per_chunk(bits)
    return math.ceil(k / n) * n * bits // 8


def pack_bits(u: torch.Tensor, bits: int) -> torch.Tensor:
    """[..., K] integers in 0 .. 2^bits - 1 -> [..., packed_width(K, bits)] uint8."""
    require(bits in PACK_BITS, f"bits must be one of {', '.join(map(str, PACK_BITS))}, got {bits!r}")
    if bits == 8:
        return u.to(torch.uint8).contiguous()
    n = _per_chunk(bits)
    k = u.shape[-1]
    pad = math.ceil(k / n) * n - k
    v = torch.nn.functional.pad(u.to(torch.int64), (0, pad)).reshape(*u.shape[:-1], -1, n)
    shifts = torch.arange(n, dtype=torch.int64, device=u.device) * bits
    word = (v << shifts).sum(dim=-1)                                        # n * bits <= 24 bits
    nbytes = n * bits // 8
    out = (word[..., None] >> (torch.arange(nbytes, dtype=torch.int64, device=u.device) * 8)) & 0xFF
    return out.reshape(*u.shape[:-1], -1).to(torch.uint8).contiguous()


def unpack_bits(p: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of pack_bits: [..., packed] uint8 -> [..., K] uint8."""
    require(bits in PACK_BITS, f"bits must be one of {', '.join(map(str, PACK_BITS))}, got {bits!r}")
    if bits == 8:
        return p[..., :k]
    if bits == 4:   # the common case, without int64 temporaries
        return torch.stack([p & 0x0F, p >> 4], dim=-1).reshape(*p.shape[:-1], -1)[..., :k]
    n = _per_chunk(bits)
    nbytes = n * bits // 8
    b = p.to(torch.int32).reshape(*p.shape[:-1], -1, nbytes)
    word = (b << (torch.arange(nbytes, dtype=torch.int32, device=p.device) * 8)).sum(dim=-1)
    v = (word[..., None] >> (torch.arange(n, dtype=torch.int32, device=p.device) * bits)) & (2**bits - 1)
    return v.reshape(*p.shape[:-1], -1)[..., :k].to(torch.uint8)


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """[N, K] integers in 0..15 -> [N, ceil(K/2)] uint8, low nibble first."""
    return pack_bits(u, 4)


def unpack_int4(p: torch.Tensor, k: int) -> torch.Tensor:
    return unpack_bits(p, 4, k)
