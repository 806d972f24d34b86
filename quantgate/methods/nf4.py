"""NF4 weight-only quantization with double quantization (QLoRA's storage).

`NF4Linear` subclasses torch.nn.Linear so that peft wraps it with LoRA
adapters like any Linear (methods/qlora.py); its `weight` is the dequantized
weight, computed on use and never trained. No CPU kernel multiplies NF4
directly: every call dequantizes, then runs an fp32 matmul (reported). Scoring
quality calls every layer thousands of times; `dequantized_once` lets each
layer keep its dequantized weight for that while, giving the same outputs bit
for bit, and speed is timed on the real path without it."""

from __future__ import annotations

import copy
import math
from collections import Counter
from contextlib import contextmanager

import torch

from ..formats.nf4 import double_dequantize, double_quantize, nf4_dequantize_packed, nf4_quantize
from ..formats.packing import pack_bits, packed_width
from ..recipes import NF4
from .common import Quantized, float_operators, select_linears
from .weight_only import kernel_summary, set_module

NF4_KERNEL = "NF4 dequantize + fp32 matmul"
NF4_HELD = "fp32 matmul on the weight dequantized once (quality scoring)"


class NF4Linear(torch.nn.Linear):
    def __init__(self, linear: torch.nn.Linear, block_size: int = 64, double_quant: bool = True,
                 dq_block_size: int = 256):
        torch.nn.Module.__init__(self)
        self._setup(linear.in_features, linear.out_features, block_size, double_quant, dq_block_size,
                    linear.bias is not None)
        codes, absmax = nf4_quantize(linear.weight, block_size)
        self.qweight = pack_bits(codes, 4)
        if double_quant:
            self.absmax_q, self.absmax_scale, self.absmax_mean = double_quantize(absmax, dq_block_size)
        else:
            self.absmax = absmax
        if linear.bias is not None:
            self.bias = torch.nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)

    def _setup(self, k, n, block_size, double_quant, dq_block_size, has_bias):
        self.in_features, self.out_features = k, n
        self.block_size, self.double_quant, self.dq_block_size = block_size, double_quant, dq_block_size
        blocks = math.ceil(k / block_size)
        self.register_buffer("qweight", torch.zeros(n, packed_width(k, 4), dtype=torch.uint8))
        if double_quant:
            self.register_buffer("absmax_q", torch.zeros(n, blocks, dtype=torch.int8))
            self.register_buffer("absmax_scale", torch.zeros(math.ceil(n * blocks / dq_block_size)))
            self.register_buffer("absmax_mean", torch.zeros(1))
        else:
            self.register_buffer("absmax", torch.zeros(n, blocks))
        self.bias = torch.nn.Parameter(torch.zeros(n), requires_grad=False) if has_bias else None
        self.packed_kernel = None
        self.calls = Counter()
        self.held = None            # {dtype: dequantized weight} inside dequantized_once

    @classmethod
    def empty(cls, in_features, out_features, block_size, double_quant, dq_block_size, bias) -> "NF4Linear":
        m = cls.__new__(cls)
        torch.nn.Module.__init__(m)
        m._setup(in_features, out_features, block_size, double_quant, dq_block_size, bias)
        return m

    kernel = NF4_KERNEL

    def block_absmax(self) -> torch.Tensor:
        if self.double_quant:
            return double_dequantize(self.absmax_q, self.absmax_scale, self.absmax_mean, self.dq_block_size)
        return self.absmax

    def dequantized_weight(self) -> torch.Tensor:
        return nf4_dequantize_packed(self.qweight, self.block_absmax(), self.block_size, self.in_features)

    @property
    def weight(self) -> torch.Tensor:   # what peft and other readers of .weight see; frozen
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        held = getattr(self, "held", None)
        if held is None:
            self.calls[NF4_KERNEL] += 1
            w = self.dequantized_weight().to(x.dtype)
        else:
            self.calls[NF4_HELD] += 1
            w = held.get(x.dtype)
            if w is None:
                w = held[x.dtype] = self.dequantized_weight().to(x.dtype)
        return torch.nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, nf4, block={self.block_size}, "
                f"double_quant={self.double_quant}")


@contextmanager
def dequantized_once(module: torch.nn.Module):
    """Inside the block, each NF4 layer of `module` dequantizes its weight on its first call and
    keeps it (the same tensor every call would compute: outputs bit-identical), so scoring costs
    what the fp32 matmuls cost; it holds the layers' weights in fp32 meanwhile (no more than the
    fp32 working copy quantization held). Yields how many NF4 layers it applies to."""
    layers = [m for m in module.modules() if isinstance(m, NF4Linear)]
    for m in layers:
        m.held = {}
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.held = None


def to_nf4(module: torch.nn.Module, recipe, targets: dict) -> list[NF4Linear]:
    layers = []
    for name, lin in targets.items():
        new = NF4Linear(lin, recipe.block_size, getattr(recipe, "double_quant", True),
                        getattr(recipe, "dq_block_size", 256))
        set_module(module, name, new)
        layers.append(new)
    return layers


def apply(model, recipe: NF4, calibration=None, train=None) -> Quantized:
    qm = copy.deepcopy(model.module)
    targets, kept = select_linears(qm, recipe)
    layers = to_nf4(qm, recipe, targets)
    notes = ["NF4 has no CPU matmul kernel here: every call dequantizes the weight, then runs an fp32 matmul; "
             "NF4 saves memory, not time"]
    return Quantized(qm.eval(), recipe, list(targets), kept, kernel_summary(layers), notes=notes,
                     float_ops=float_operators(model.module, "weight-only quantization (activations stay float)"))
