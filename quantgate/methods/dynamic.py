"""Dynamic int8: int8 weights, activations quantized per batch at run time."""

from __future__ import annotations

import copy
import warnings

import torch

from ..recipes import DynamicInt8
from . import pt2e
from .common import Quantized, float_operators, select_linears


def torch_ao_available() -> bool:
    """torch.ao.quantization is deprecated; use it only while it is present and fbgemm is built in."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return "fbgemm" in torch.backends.quantized.supported_engines


def resolve_backend(recipe: DynamicInt8) -> str:
    # Measured here (bench/classify_speed.py): torch.ao's fbgemm kernels beat the
    # PT2E dynamic path on AVX2 CPUs, so "auto" prefers them while they exist.
    if recipe.backend != "auto":
        return recipe.backend
    return "torch.ao" if torch_ao_available() else "pt2e"


def apply(model, recipe: DynamicInt8, calibration=None, train=None) -> Quantized:
    targets, kept = select_linears(model.module, recipe)
    backend = resolve_backend(recipe)
    if backend == "torch.ao":
        from torch.ao.quantization import quantize_dynamic
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qm = quantize_dynamic(copy.deepcopy(model.module), qconfig_spec=set(targets), dtype=torch.qint8)
        kernel = "fbgemm dynamic int8 linear (torch.ao, eager)"
        done = list(targets)
    else:
        example = model.encode(["calibration is not needed for dynamic quantization"] * 2)
        quantizer = pt2e.x86_quantizer(dynamic=True, reduce_range=pt2e.reduce_range())
        prepared = pt2e.prepare(model.module, example, quantizer, skip=list(kept))
        qm, done = pt2e.finish(prepared, kept)
        kernel = "oneDNN dynamic int8 linear (PT2E + inductor)"
    float_ops = float_operators(model.module, "dynamic int8")
    return Quantized(qm, recipe, done, kept, kernel, float_ops=float_ops)
