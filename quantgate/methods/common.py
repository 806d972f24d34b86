"""What every method shares: choosing which Linear layers to quantize, and
saying which layers and operators stayed in float and why."""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..recipes import Recipe


@dataclass
class Quantized:
    """A quantized candidate and what is known about how it was made."""

    module: torch.nn.Module                     # (input_ids, attention_mask) -> logits
    recipe: Recipe
    quantized_layers: list[str]
    float_layers: dict[str, str]                # linear module -> why it stayed in float
    kernel: str                                 # which kernel runs the quantized layers
    seconds: float = 0.0                        # time to quantize (calibration included)
    calibration: dict | None = None             # fingerprint of the calibration data, if any
    notes: list[str] = field(default_factory=list)
    weight_bytes: int = 0
    float_ops: dict[str, str] = field(default_factory=dict)  # other operators left in float, by kind

    @property
    def name(self) -> str:
        return self.recipe.name


def select_linears(module: torch.nn.Module, recipe: Recipe) -> tuple[dict[str, torch.nn.Linear], dict[str, str]]:
    """Linear layers to quantize, and the ones kept in float with the reason."""
    targets, kept = {}, {}
    for name, m in module.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        pattern = next((p for p in recipe.exclude if fnmatch.fnmatchcase(name, p)), None)
        if pattern:
            kept[name] = f"excluded by the recipe (pattern {pattern!r})"
        elif m.out_features < recipe.min_out_features:
            kept[name] = f"too small (out_features={m.out_features} < min_out_features={recipe.min_out_features})"
        else:
            targets[name] = m
    return targets, kept


FLOAT_OPS = {
    torch.nn.Embedding: "embedding lookup: memory-bound, no int8 kernel in this path",
    torch.nn.LayerNorm: "normalization runs in float in every int8 CPU path",
}


def float_operators(module: torch.nn.Module, what: str) -> dict[str, str]:
    """Summaries of the non-Linear operators that stay in float, by type."""
    counts = Counter(type(m) for m in module.modules() if type(m) in FLOAT_OPS)
    out = {f"{t.__name__} x{n}": FLOAT_OPS[t] for t, n in counts.items()}
    out["attention matmuls, softmax, activation functions"] = f"not quantized by {what}: they run in float"
    return out


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of every distinct tensor a module needs to run: parameters and
    buffers; for an exported graph, only the constants its nodes read (the float
    weights it was traced from are not counted); and the int8 weights inside
    torch.ao's packed parameters."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.numel(), t.dtype)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()

    graphs = [m for m in module.modules() if isinstance(m, torch.fx.GraphModule)]
    if graphs:
        from .pt2e import graph_constants
        for g in graphs:
            for t in graph_constants(g).values():
                add(t)
        return total
    for t in module.parameters():
        add(t)
    for t in module.buffers():
        add(t)
    for m in module.modules():
        if type(m).__name__ == "LinearPackedParams":       # torch.ao dynamic int8
            w, b = m._weight_bias()
            total += w.numel() * w.element_size()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                total += w.q_per_channel_scales().numel() * 8 + w.q_per_channel_zero_points().numel() * 8
            add(b)
    return total
