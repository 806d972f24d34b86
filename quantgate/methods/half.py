"""Half precision (bf16 / fp16): the model cast, not quantized.

On a CPU the type needs native matrix instructions to be worth anything:
bf16 runs on AVX512-BF16 or AMX, fp16 on AMX-FP16; without them oneDNN emulates
it and the model gets slower than fp32, so the recipe is refused there, with
the reason. On CUDA both run natively. A classifier's graph is exported and
compiled (as the PT2E int8 paths are: the same `Compiled`, so it saves and
reloads as a program), its logits returned in fp32; a causal LM's transformers
modules are cast, and its decode runs in transformers' loop (quantgate's
decoder computes in fp32)."""

from __future__ import annotations

import copy

import torch

from ..errors import QuantgateError
from ..models import CausalLM
from ..recipes import Half
from .common import Quantized

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fast_path(dtype: str) -> str | None:
    """What runs `dtype` fast here, or None: CUDA, or the CPU's native instructions (detected, not assumed)."""
    from ..finetune import cpu_has_native_bf16
    if torch.cuda.is_available():
        return f"CUDA ({torch.cuda.get_device_name()})"
    if dtype == "bf16" and cpu_has_native_bf16():
        return "the CPU's native bf16 (AVX512-BF16" + (", AMX)" if torch.cpu._is_amx_tile_supported() else ")")
    if dtype == "fp16" and getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)():
        return "the CPU's native fp16 (AMX-FP16)"
    return None


class FloatLogits(torch.nn.Module):
    """A half-precision model whose logits come back in fp32, as every candidate's do."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids, attention_mask).float()


def apply(model, recipe: Half, calibration=None, train=None) -> Quantized:
    how = fast_path(recipe.dtype)
    if how is None:
        need = "AVX512-BF16 or AMX" if recipe.dtype == "bf16" else "AMX-FP16"
        alt = "; bf16 is native here" if recipe.dtype == "fp16" and fast_path("bf16") else ""
        raise QuantgateError(f"{recipe.name}: this machine has no fast path for it (no CUDA GPU, and the CPU lacks "
                             f"{need}), so it would run slower than fp32{alt}; use int8 (dynamic, static or int8) "
                             "instead")
    dtype = DTYPES[recipe.dtype]
    layers = [n for n, m in model.module.named_modules() if isinstance(m, torch.nn.Linear)]
    half = copy.deepcopy(model.module).eval()
    for p in half.parameters():      # the parameters only: buffers (rotary frequencies) stay as the model keeps
        p.data = p.data.to(dtype)    # them, as transformers' from_pretrained(dtype=...) leaves them
    notes = [f"every weight and activation in {recipe.dtype} on {how}"]
    if isinstance(model, CausalLM):
        return Quantized(half, recipe, layers, {}, f"{recipe.dtype} matmuls (PyTorch, {how})", notes=notes)
    import warnings

    from . import pt2e
    example = model.encode(["half precision needs no calibration", "a second example"])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1, max=4096)
        gm = torch.export.export(FloatLogits(half), (example["input_ids"], example["attention_mask"]),
                                 dynamic_shapes=({0: batch}, {0: batch}), strict=False).module()
    return Quantized(pt2e.Compiled(gm), recipe, layers, {},
                     f"{recipe.dtype} graph compiled by inductor (oneDNN, {how})", notes=notes)
