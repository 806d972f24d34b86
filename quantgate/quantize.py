"""quantize(model, recipe, calibration): the one verb for every method."""

from __future__ import annotations

import time

from .errors import QuantgateError
from .methods import dynamic, gptq, nf4, qat, qlora, static, weight_only
from .methods.common import Quantized, tensor_bytes
from .models import CausalLM, Model
from .recipes import Recipe

_METHODS = {
    "dynamic-int8": dynamic.apply,
    "static-int8": static.apply,
    "weight-only": weight_only.apply,
    "qat": qat.apply,
    "gptq": gptq.apply,
    "nf4": nf4.apply,
}


def quantize(model: Model, recipe: Recipe, calibration=None, train=None) -> Quantized:
    """Quantize `model` (a quantgate Model) as `recipe` says; `calibration` is a
    Dataset of texts for recipes that need one, `train` a labelled Dataset for
    QAT. The original model is untouched."""
    if not isinstance(recipe, Recipe):
        raise QuantgateError(f"recipe must be a quantgate Recipe (e.g. DynamicInt8()), got {type(recipe).__name__}")
    if not isinstance(model, (Model, CausalLM)):
        raise QuantgateError("model must be a quantgate Model: use quantgate.models.load_classifier(DIR), "
                             "quantgate.models.load_causal_lm(DIR) or quantgate.models.from_module(module, tokenizer, labels)")
    needs_lm = recipe.method in ("gptq", "nf4", "qlora")
    if needs_lm and not isinstance(model, CausalLM):
        raise QuantgateError(f"{recipe.name} is for causal language models; load one with load_causal_lm(DIR)")
    t0 = time.perf_counter()
    if recipe.method == "qat":
        q = qat.apply(model, recipe, calibration, train=train)
    elif recipe.method == "qlora":
        q = qlora.apply(model, recipe, train=train)
    else:
        q = _METHODS[recipe.method](model, recipe, calibration)
    q.seconds = round(time.perf_counter() - t0, 2)
    q.weight_bytes = tensor_bytes(q.module)
    return q
