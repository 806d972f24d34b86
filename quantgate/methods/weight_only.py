"""Weight-only int8 / int4: weights stored low-bit with per-channel or per-group
scales, activations in float.

Storage is one canonical format (int8 codes, or two int4 codes per byte; fp32
scales; integer zero points). Which kernel runs depends on the rows per call,
because the packed CPU kernels are fast only for a few rows (decode-like calls)
and only with bf16 activations (measured in bench/classify_speed.py):

- up to PACKED_MAX_ROWS rows: aten._weight_int8pack_mm / aten._weight_int4pack_mm_for_cpu
  on bf16 activations (int4 needs a group size of 32/64/128/256 dividing the width)
- more rows (an encoder's batch x sequence): dequantize, then an fp32 matmul

Each layer counts the calls that took each path, so a report says what ran.
"""

from __future__ import annotations

import copy
import math
from collections import Counter

import torch

from ..formats.affine import choose_qparams, quantize
from ..formats.packing import pack_int4, unpack_int4
from ..recipes import WeightOnly
from .common import Quantized, float_operators, select_linears

INT4_KERNEL_GROUPS = (32, 64, 128, 256)
PACKED_MAX_ROWS = 16
DEQUANT = "dequantize + fp32 matmul"


class WeightOnlyLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, bits: int, group_size: int | None, symmetric: bool):
        super().__init__()
        w = linear.weight.detach().float()
        self.out_features, self.in_features = w.shape
        self.bits, self.group_size = bits, group_size
        qp = choose_qparams(w, bits, symmetric, "group" if group_size else "channel", group_size)
        u = (quantize(w, qp) - qp.qmin).to(torch.uint8)           # unsigned codes 0 .. 2^bits - 1
        self.register_buffer("qweight", pack_int4(u) if bits == 4 else u)
        self.register_buffer("scales", qp.scale.float().contiguous())             # [N, 1] or [N, G]
        self.register_buffer("zero_points", (qp.zero_point - qp.qmin).to(torch.uint8).contiguous())
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        k = self.in_features
        if bits == 8 and group_size is None and symmetric:
            self.packed_kernel = "aten._weight_int8pack_mm (bf16 activations)"
        elif bits == 4 and group_size in INT4_KERNEL_GROUPS and k % group_size == 0:
            self.packed_kernel = "aten._weight_int4pack_mm_for_cpu (bf16 activations)"
        else:
            self.packed_kernel = None
        self._packed = None
        self.calls = Counter()

    @property
    def kernel(self) -> str:
        if self.packed_kernel:
            return f"{self.packed_kernel} for <= {PACKED_MAX_ROWS} rows, else {DEQUANT}"
        return DEQUANT

    def codes(self) -> torch.Tensor:
        """Unsigned integer codes, [N, K]."""
        return unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight

    def dequantized_weight(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        if self.group_size is None:
            return (self.codes().float() - self.zero_points.float()) * self.scales
        g = self.group_size
        groups = math.ceil(k / g)
        c = self.codes().float()
        if groups * g != k:
            c = torch.nn.functional.pad(c, (0, groups * g - k))
        c = c.view(n, groups, g)
        w = (c - self.zero_points.float()[..., None]) * self.scales[..., None]
        return w.view(n, groups * g)[:, :k]

    def _packed_args(self):
        """The packed kernel's layout, built on first use (decode-like calls only)."""
        if self._packed is None:
            if self.bits == 8:
                codes = self.codes().to(torch.int16) - self.zero_points.to(torch.int16)  # symmetric: signed codes
                self._packed = (codes.to(torch.int8).contiguous(), self.scales.reshape(-1).bfloat16())
            else:
                # tinygemm computes (u - 8) * scale + zero per group; ours is (u - zp) * scale
                zero = (8 - self.zero_points.float()) * self.scales
                sz = torch.stack([self.scales, zero], dim=-1).transpose(0, 1).contiguous().bfloat16()
                u = self.codes().to(torch.int32)
                self._packed = (torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1), sz)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.packed_kernel and x2.shape[0] <= PACKED_MAX_ROWS:
            w, s = self._packed_args()
            xb = x2.to(torch.bfloat16).contiguous()
            if self.bits == 8:
                y = torch.ops.aten._weight_int8pack_mm(xb, w, s)
            else:
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, w, self.group_size, s)
            self.calls[self.packed_kernel] += 1
            y = y.float()
        else:
            y = torch.nn.functional.linear(x2.float(), self.dequantized_weight())
            self.calls[DEQUANT] += 1
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, int{self.bits}, group={self.group_size}, kernel={self.kernel}"


def kernel_calls(module: torch.nn.Module) -> dict[str, int]:
    """How many layer calls took each path since quantization."""
    total = Counter()
    for m in module.modules():
        if isinstance(m, WeightOnlyLinear):
            total.update(m.calls)
    return dict(total)


def _set(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def apply(model, recipe: WeightOnly, calibration=None) -> Quantized:
    qm = copy.deepcopy(model.module)
    targets, kept = select_linears(qm, recipe)
    kernels = Counter()
    for name, lin in targets.items():
        new = WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric)
        kernels[new.kernel] += 1
        _set(qm, name, new)
    notes = [f"calls with more than {PACKED_MAX_ROWS} rows (batch x sequence) dequantize the weights and run an fp32 "
             "matmul: on CPU, weight-only quantization saves memory, not time, for encoder batches"]
    if kernels.get(DEQUANT):
        notes.append(f"{kernels[DEQUANT]} layer(s) have no packed kernel for int{recipe.bits}, group "
                     f"{recipe.group_size} at their width: they always dequantize before an fp32 matmul")
    kernel = ", ".join(f"{k} x{n}" for k, n in kernels.most_common())
    float_ops = float_operators(model.module, "weight-only quantization (activations stay float)")
    return Quantized(qm.eval(), recipe, list(targets), kept, kernel, notes=notes, float_ops=float_ops)
