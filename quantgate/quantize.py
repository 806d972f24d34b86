"""quantize(model, recipe, calibration): the one verb for every method."""

from __future__ import annotations

import time

from .errors import QuantgateError
from .methods import dynamic, gptq, half, nf4, qat, qlora, static, weight_only
from .methods.common import Quantized, footprint, tensor_bytes
from .models import CausalLM, Model
from . import recipes
from .recipes import Recipe

# One handler per recipe type, each apply(model, recipe, calibration=None, train=None) -> Quantized.
# What a method needs (calibration, training data, which kinds of model) is data on its recipe class.
HANDLERS = {
    recipes.Half: half.apply,
    recipes.DynamicInt8: dynamic.apply,
    recipes.StaticInt8: static.apply,
    recipes.WeightOnly: weight_only.apply,
    recipes.QAT: qat.apply,
    recipes.GPTQ: gptq.apply,
    recipes.NF4: nf4.apply,
    recipes.QLoRA: qlora.apply,
}


def check_applies(recipe: Recipe, task: str) -> None:
    """Refuse a recipe for a kind of model it does not apply to (the recipe class says which)."""
    if task not in recipe.tasks:
        kinds = " and ".join("causal language models" if t == "causal-lm" else "classifiers" for t in recipe.tasks)
        raise QuantgateError(f"{recipe.name} is for {kinds}, and this model is a "
                             f"{'causal language model' if task == 'causal-lm' else 'classifier'}: "
                             + ("use int8, int4-g128, gptq-int4-g128, nf4 or qlora" if task == "causal-lm"
                                else "use dynamic, static, int8, int4-g32 or qat"))


def quantize(model: Model, recipe: Recipe, calibration=None, train=None) -> Quantized:
    """Quantize `model` (a quantgate Model) as `recipe` says; `calibration` is a
    Dataset of texts for recipes that need one, `train` a labelled Dataset for
    QAT. The original model is untouched."""
    if not isinstance(recipe, Recipe):
        raise QuantgateError(f"recipe must be a quantgate Recipe (e.g. DynamicInt8()), got {type(recipe).__name__}")
    if not isinstance(model, (Model, CausalLM)):
        raise QuantgateError("model must be a quantgate Model: use quantgate.models.load_classifier(DIR), "
                             "quantgate.models.load_causal_lm(DIR) or quantgate.models.from_module(module, tokenizer, labels)")
    check_applies(recipe, model.task)
    t0 = time.perf_counter()
    q = HANDLERS[type(recipe)](model, recipe, calibration if recipe.needs_calibration else None,
                               train if recipe.needs_training else None)
    if recipe.int8_layers:
        weight_only.keep_int8(q)
    q.seconds = round(time.perf_counter() - t0, 2)
    q.weight_bytes = tensor_bytes(q.module)
    q.footprint = footprint(model.module, q.weight_bytes, q.quantized_layers, q.module, list(q.float_layers))
    return q
