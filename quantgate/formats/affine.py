"""Uniform affine quantization, int2 to int8.

    q     = clamp(round(x / scale) + zero_point, qmin, qmax)
    x_hat = (q - zero_point) * scale

Granularity is per tensor, per output channel (axis 0), or per group of
`group_size` consecutive input features (last axis) within each channel. A
group size that does not divide the input features gives a shorter last group.
Symmetric formats use the signed range [-2^(b-1), 2^(b-1)-1] with zero_point 0;
asymmetric ones use [0, 2^b - 1] with an integer zero point, and the range
always contains 0 so that zero padding is exact (as in PyTorch's observers).
Rounding is round-half-to-even, like PyTorch's quantize ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import require

GRANULARITIES = ("tensor", "channel", "group")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    require(isinstance(bits, int) and 2 <= bits <= 8, f"bits must be an integer from 2 to 8, got {bits!r}")
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@dataclass
class QParams:
    scale: torch.Tensor        # float32; shape [], [N, 1] or [N, n_groups]
    zero_point: torch.Tensor   # int32, same shape as scale
    bits: int
    symmetric: bool
    granularity: str = "tensor"
    group_size: int | None = None

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]

    def rows(self, i: int, j: int) -> "QParams":
        """The parameters of output rows i:j (per-tensor parameters are every row's)."""
        if self.granularity == "tensor":
            return self
        return QParams(self.scale[i:j], self.zero_point[i:j], self.bits, self.symmetric, self.granularity,
                       self.group_size)

    def expand(self, t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Broadcast a per-group parameter to a weight of `shape` ([N, K])."""
        if self.granularity != "group":
            return t
        return t.repeat_interleave(self.group_size, dim=-1)[..., : shape[-1]]


def grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K/g), g], zero-padding the last group."""
    n, k = x.shape
    n_groups = math.ceil(k / group_size)
    pad = n_groups * group_size - k
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(n, n_groups, group_size)


def minmax_range(x: torch.Tensor, granularity: str = "tensor", group_size: int | None = None):
    """Min and max of `x` at the given granularity (the shapes QParams uses)."""
    require(granularity in GRANULARITIES, f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    x = x.detach().float()
    if granularity == "tensor":
        return x.min(), x.max()
    require(x.dim() == 2, f"per-{granularity} quantization needs a 2-D weight, got shape {tuple(x.shape)}")
    if granularity == "channel":
        return x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    require(isinstance(group_size, int) and group_size > 0, f"group_size must be a positive integer, got {group_size!r}")
    g = grouped(x, group_size)
    return g.amin(dim=-1), g.amax(dim=-1)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool,
                       granularity: str = "tensor", group_size: int | None = None,
                       eps: float = torch.finfo(torch.float32).eps) -> QParams:
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = torch.clamp(amax / ((qmax - qmin) / 2), min=eps)
        zp = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return QParams(scale, zp, bits, symmetric, granularity, group_size)


def choose_qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "tensor",
                   group_size: int | None = None) -> QParams:
    """Min-max quantization parameters for `x`."""
    lo, hi = minmax_range(x, granularity, group_size)
    return qparams_from_range(lo, hi, bits, symmetric, granularity, group_size)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integers (int32) for `x`; the caller packs them into a narrower dtype."""
    scale = qp.expand(qp.scale, x.shape)
    zp = qp.expand(qp.zero_point, x.shape)
    # multiply by the inverse scale, as PyTorch's kernels do: ties then round the same way
    q = torch.round(x.float() * (1.0 / scale)) + zp
    return torch.clamp(q, qp.qmin, qp.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    scale = qp.expand(qp.scale, q.shape)
    zp = qp.expand(qp.zero_point, q.shape)
    return (q.to(torch.int32) - zp).float() * scale


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    return dequantize(quantize(x, qp), qp).to(x.dtype)
