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
    activation_profile: dict | None = None      # calibrated ranges and histograms, for the drift monitor
    adapters: dict | None = None                # LoRA adapters' configuration (QLoRA, unmerged)
    extra: dict = field(default_factory=dict)   # method-specific facts: QLoRA's losses, GPTQ's layer errors
    footprint: dict | None = None               # bits per parameter, what stayed in float (see `footprint`)

    @property
    def name(self) -> str:
        return self.recipe.name


def compute_device(requested: str, what: str) -> str:
    """Where a method computes: auto (CUDA when present), cpu or cuda."""
    from ..errors import require
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    require(requested == "cpu" or torch.cuda.is_available(),
            f"{what} device 'cuda' was asked for but no CUDA GPU is visible; use device: cpu (or auto)")
    return requested


INT8_KEPT = "kept for int8 by the recipe"


def _match(name: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)


def select_linears(module: torch.nn.Module, recipe: Recipe) -> tuple[dict[str, torch.nn.Linear], dict[str, str]]:
    """Linear layers to quantize, and the ones kept in float with the reason (the recipe's
    int8_layers are kept too, as INT8_KEPT: `quantize` rounds them to int8 after the method)."""
    targets, kept = {}, {}
    embeddings = [m.weight for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    real = lambda w: w.device.type != "meta"     # a skeleton's weights (streaming) are all at address 0
    tied = lambda w: any(w is e or (real(w) and real(e) and w.data_ptr() == e.data_ptr()) for e in embeddings)
    for name, m in module.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        pattern = _match(name, recipe.exclude)
        if pattern:
            kept[name] = f"excluded by the recipe (pattern {pattern!r})"
        elif (pattern := _match(name, recipe.int8_layers)):
            kept[name] = f"{INT8_KEPT} (pattern {pattern!r})"
        elif tied(m.weight):
            kept[name] = "output head tied to the input embedding: kept in float, as GPTQ tools do"
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


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a module needs to run, by name, as plain tensors: parameters
    and buffers; for an exported graph, only the constants its nodes read (not
    the float weights it was traced from); the int8 weights, scales and zero
    points inside torch.ao's packed parameters."""
    graphs = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.fx.GraphModule)]
    if graphs:
        from .pt2e import graph_constants
        return {f"{n}.{k}" if n else k: t for n, g in graphs for k, t in graph_constants(g).items()}
    out, seen = {}, set()
    for k, v in module.state_dict(keep_vars=True).items():
        if not isinstance(v, torch.Tensor) or v.is_quantized:
            continue
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.dtype)
        if v.device.type != "meta" and key in seen:    # a tied weight (an LM head sharing the embedding): once
            continue
        seen.add(key)
        out[k] = v
    for name, m in module.named_modules():
        if type(m).__name__ == "LinearPackedParams":       # torch.ao dynamic int8
            w, b = m._weight_bias()
            out[f"{name}.weight_int8"] = w.int_repr()
            if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                out[f"{name}.weight_scales"] = w.q_per_channel_scales()
                out[f"{name}.weight_zero_points"] = w.q_per_channel_zero_points()
            else:
                out[f"{name}.weight_scales"] = torch.tensor([w.q_scale()], dtype=torch.float64)
                out[f"{name}.weight_zero_points"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            if b is not None:
                out[f"{name}.bias"] = b
    return {k: v for k, v in out.items() if v.device.type != "meta"}


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct tensors in module_tensors (shared storage counted once)."""
    seen, total = set(), 0
    for t in module_tensors(module).values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def footprint(original: torch.nn.Module, weight_bytes: int, quantized_layers: list[str] | None = None,
              quantized: torch.nn.Module | None = None, float_layers: list[str] | None = None) -> dict:
    """What the stored bytes mean per parameter of the original model: bits per
    parameter for the whole model and for the quantized layers alone (an untied
    low-bit copy of a tied head counts as a quantized layer of its own), and the
    parameters left in float (their share, and the largest tensors by name; a
    tied embedding and head are one tensor, counted once)."""
    seen, params = {}, []
    for name, p in original.named_parameters(remove_duplicate=False):
        key = id(p) if p.is_meta else (p.data_ptr(), p.numel())      # a model's shapes alone (on meta): by object
        if key in seen:
            seen[key]["names"].append(name)
        else:
            seen[key] = {"names": [name], "n": p.numel()}
            params.append(seen[key])
    total = sum(p["n"] for p in params)
    q_names = set(quantized_layers or [])
    in_q = lambda n: n.rsplit(".", 1)[0] in q_names
    orig = dict(original.named_modules())
    q_params = sum(p.numel() for n in q_names if n in orig for p in orig[n].parameters(recurse=False))
    f_params = sum(p["n"] for p in params if not all(in_q(n) for n in p["names"]))
    q_bits = None
    if quantized is not None and q_names:
        mods = dict(quantized.named_modules())
        if q_names <= set(mods):
            q_bytes = sum(tensor_bytes(mods[n]) for n in q_names)
            q_bits = 8 * q_bytes / q_params if q_params else None
    floats = sorted((p for p in params if not all(in_q(n) for n in p["names"])), key=lambda p: -p["n"])
    return {"parameters": total, "bits_per_param": 8 * weight_bytes / total if total else None,
            "quantized_parameters": q_params, "quantized_bits_per_weight": q_bits,
            "float_parameters": f_params, "float_share": f_params / total if total else 0.0,
            "largest_float": [{"name": " = ".join(p["names"]), "parameters": p["n"], "share": p["n"] / total}
                              for p in floats[:3]],
            "float_layers": {n: sum(p.numel() for p in orig[n].parameters(recurse=False))
                             for n in float_layers or [] if n in orig}}
