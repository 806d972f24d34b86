"""Weight-only int8 / int4: weights stored low-bit with per-channel or per-group
scales, activations in float. Each layer runs the fastest kernel that accepts
its shape and says which one it ran:

- int8, per channel, symmetric: aten._weight_int8pack_mm
- int4, group size 32/64/128/256 dividing the input features:
  aten._weight_int4pack_mm_for_cpu (the kernel torchao's CPU int4 path uses)
- anything else: packed storage, dequantized on the fly before a float matmul
"""

from __future__ import annotations

import copy
from collections import Counter

import torch

from ..formats.affine import choose_qparams, dequantize, quantize
from ..formats.packing import pack_int4, unpack_int4
from ..recipes import WeightOnly
from .common import Quantized, float_operators, select_linears

INT4_KERNEL_GROUPS = (32, 64, 128, 256)


class WeightOnlyLinear(torch.nn.Module):
    def __init__(self, linear: torch.nn.Linear, bits: int, group_size: int | None, symmetric: bool):
        super().__init__()
        w = linear.weight.detach().float()
        self.out_features, self.in_features = w.shape
        self.bits, self.group_size = bits, group_size
        qp = choose_qparams(w, bits, symmetric, "group" if group_size else "channel", group_size)
        q = quantize(w, qp)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        k = self.in_features
        if bits == 8 and group_size is None and symmetric:
            self.kernel = "aten._weight_int8pack_mm"
            self.register_buffer("qweight", q.to(torch.int8).contiguous())
            self.register_buffer("scales", qp.scale.reshape(-1).contiguous())
        elif bits == 4 and group_size in INT4_KERNEL_GROUPS and k % group_size == 0:
            self.kernel = "aten._weight_int4pack_mm_for_cpu"
            u = (q - qp.qmin).to(torch.int32)                      # unsigned 0..15
            # tinygemm computes (u - 8) * scale + zero per group
            zero = (8 + qp.qmin - qp.zero_point.float()) * qp.scale  # [N, G]
            sz = torch.stack([qp.scale, zero], dim=-1).transpose(0, 1).contiguous()  # [G, N, 2]
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1))
            self.register_buffer("scales_and_zeros", sz)
        else:
            self.kernel = "dequantize + float matmul"
            self._qp = qp
            stored = (q - qp.qmin).to(torch.uint8)
            self.register_buffer("qweight", pack_int4(stored) if bits == 4 else stored)
            self.register_buffer("scales", qp.scale.contiguous())
            self.register_buffer("zero_points", qp.zero_point.to(torch.int8 if bits <= 8 else torch.int32))

    def dequantized_weight(self) -> torch.Tensor:
        if self.kernel == "aten._weight_int8pack_mm":
            return self.qweight.float() * self.scales[:, None]
        if self.kernel == "aten._weight_int4pack_mm_for_cpu":
            eye = torch.eye(self.in_features)
            return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group_size, self.scales_and_zeros).t()
        u = unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight
        return dequantize(u.to(torch.int32) + self._qp.qmin, self._qp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float().contiguous()
        if self.kernel == "aten._weight_int8pack_mm":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        elif self.kernel == "aten._weight_int4pack_mm_for_cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales_and_zeros)
        else:
            y = x2 @ self.dequantized_weight().t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, int{self.bits}, group={self.group_size}, kernel={self.kernel}"


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
    notes = []
    if "dequantize + float matmul" in kernels:
        notes.append(f"{kernels['dequantize + float matmul']} layer(s) fall back to dequantize + float matmul "
                     f"(no packed kernel for int{recipe.bits}, group {recipe.group_size}, this shape): expect no speed-up")
    kernel = ", ".join(f"{k} x{n}" for k, n in kernels.most_common())
    float_ops = float_operators(model.module, "weight-only quantization (activations stay float)")
    return Quantized(qm.eval(), recipe, list(targets), kept, kernel, notes=notes, float_ops=float_ops)
