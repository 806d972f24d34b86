"""Which layers hurt most when quantized? Two stages, so it stays cheap:

1. one forward pass measures every Linear layer's own relative output error
   when its weights (and inputs) are fake-quantized with a recipe's formats;
2. the `refine` layers with the largest error are then fake-quantized one at a
   time, and scored by the mean KL divergence of the model's class
   distribution from the float model's (the metric impact, error propagation
   included).

`quantgate auto` keeps the top layers in float when a candidate misses its budget.

For a causal LM (`lm_layer_sensitivity`) the same two stages run on
calibration token windows: stage 1 measures each layer's error in the forward
hook as it happens (nothing is stored: an LM has hundreds of layers), with the
layer's weights in the recipe's own stored format (GPTQ's rounding depends on
the other layers, so its layers are ranked by round-to-nearest at its bits and
groups); stage 2 scores the KL of the next-token distribution.

The formats mirror what each method runs: int8 per-channel (or per-tensor)
symmetric weights; activations per tensor, dynamic per call for dynamic-int8,
from calibration min-max for static (7-bit when the CPU needs reduce_range);
for weight-only, the weight format alone."""

from __future__ import annotations

import torch

from .calibration import batches
from .data import Dataset
from .errors import require
from .formats.affine import choose_qparams, fake_quantize, qparams_from_range
from .methods import pt2e
from .methods.common import select_linears
from .progress import progress
from .recipes import QAT, DynamicInt8, Recipe, StaticInt8, WeightOnly


def _weight_format(recipe: Recipe) -> dict:
    if isinstance(recipe, WeightOnly):
        g = recipe.group_size
        return {"bits": recipe.bits, "symmetric": recipe.symmetric, "granularity": "group" if g else "channel",
                "group_size": g}
    per_channel = getattr(recipe, "per_channel_weights", True)
    return {"bits": getattr(recipe, "weight_bits", 8), "symmetric": True,
            "granularity": "channel" if per_channel else "tensor", "group_size": None}


def _act_bits(recipe: Recipe) -> int | None:
    """Activation bits (asymmetric) or None when activations stay in float."""
    if isinstance(recipe, WeightOnly):
        return None
    if isinstance(recipe, DynamicInt8):
        return 8
    return 7 if pt2e.reduce_range() else 8


def _fake_linear(lin, x, wq, abits, act_range):
    if abits is not None:
        lo, hi = act_range if act_range is not None else (float(x.min()), float(x.max()))
        x = fake_quantize(x, qparams_from_range(torch.tensor(lo), torch.tensor(hi), abits, False))
    return torch.nn.functional.linear(x, wq, lin.bias)


def layer_sensitivity(model, recipe: Recipe, texts: Dataset | list[str], n: int = 32, refine: int = 8,
                      batch_size: int = 32, verbose: bool = False) -> list[dict]:
    """Quantizable Linear layers, most sensitive first: {layer, rel_error, kl};
    kl is None for layers outside the refined top."""
    from .models import CausalLM
    if isinstance(model, CausalLM):
        return lm_layer_sensitivity(model, recipe, texts, refine=refine, verbose=verbose)
    texts = texts.texts if isinstance(texts, Dataset) else list(texts)
    require(len(texts) > 0, "sensitivity needs some calibration texts; got none")
    enc = model.encode(texts[:n])
    targets, _ = select_linears(model.module, recipe)
    wfmt, abits = _weight_format(recipe), _act_bits(recipe)
    static = isinstance(recipe, (StaticInt8, QAT))
    module = model.module
    wq = {name: fake_quantize(m.weight.detach(), choose_qparams(m.weight.detach(), **wfmt)) for name, m in targets.items()}

    # stage 1: each layer's own output error, every layer at once (the float model runs unchanged)
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in targets}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in targets}

    def keep(m, args, out, name):
        inputs[name].append(args[0].detach())
        outputs[name].append(out.detach())
    hs = [m.register_forward_hook(lambda m, a, o, n=name: keep(m, a, o, n)) for name, m in targets.items()]
    with torch.inference_mode():
        base = torch.cat([module(ids, am).float().log_softmax(-1) for ids, am in batches(enc, batch_size)])
    for h in hs:
        h.remove()
    ranges = {name: (min(0.0, min(float(x.min()) for x in xs)), max(0.0, max(float(x.max()) for x in xs)))
              for name, xs in inputs.items()} if static else {}
    rows = {}
    with torch.inference_mode():
        for name, lin in targets.items():
            num = den = 0.0
            for x, y in zip(inputs[name], outputs[name]):
                e = _fake_linear(lin, x, wq[name], abits, ranges.get(name)) - y
                num, den = num + float(e.pow(2).sum()), den + float(y.pow(2).sum())
            rows[name] = {"layer": name, "rel_error": (num / max(den, 1e-24)) ** 0.5, "kl": None}
    inputs.clear()                            # free the captured activations before stage 2
    outputs.clear()

    # stage 2: metric impact of the worst layers, one at a time
    top = sorted(rows, key=lambda k: -rows[k]["rel_error"])[:refine]
    with progress(total=len(top), desc=f"layer sensitivity ({recipe.name})", enabled=verbose) as bar:
        for name in top:
            lin = targets[name]
            h = lin.register_forward_hook(
                lambda m, a, o, n=name: _fake_linear(m, a[0], wq[n], abits, ranges.get(n)))
            try:
                with torch.inference_mode():
                    logp = torch.cat([module(ids, am).float().log_softmax(-1) for ids, am in batches(enc, batch_size)])
            finally:
                h.remove()
            rows[name]["kl"] = float((base.exp() * (base - logp)).sum(-1).mean())
            bar.update(1)
    return sorted(rows.values(), key=lambda r: (r["kl"] is None, -(r["kl"] or 0), -r["rel_error"]))


def _stored_weight(recipe: Recipe, lin: torch.nn.Linear) -> torch.Tensor:
    """The weight as the recipe stores it (GPTQ: round-to-nearest at its bits and groups)."""
    from .methods.nf4 import NF4Linear
    from .methods.weight_only import WeightOnlyLinear
    if recipe.method == "nf4":
        return NF4Linear(lin, recipe.block_size, recipe.double_quant, recipe.dq_block_size).dequantized_weight()
    return WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric).dequantized_weight()


@torch.inference_mode()
def lm_layer_sensitivity(lm, recipe: Recipe, texts: Dataset | list[str], windows: int = 4, seq_len: int = 128,
                         refine: int = 8, verbose: bool = False) -> list[dict]:
    """A causal LM's quantizable Linear layers, most sensitive first: {layer, rel_error, kl}."""
    from .calibration import lm_windows
    require(recipe.method in ("weight-only", "gptq", "nf4"),
            f"layer sensitivity of an LM needs a weight format (int, gptq, nf4), not {recipe.name}")
    w, _ = lm_windows(lm.tokenizer, texts, windows, seq_len, "sensitivity text")
    module = lm.module
    targets, _ = select_linears(module, recipe)
    stored = {}
    err = {name: [0.0, 0.0] for name in targets}

    def measure(m, args, out, name):
        if name not in stored:
            stored[name] = _stored_weight(recipe, m)
        e = torch.nn.functional.linear(args[0], stored[name], m.bias) - out
        err[name][0] += float(e.float().pow(2).sum())
        err[name][1] += float(out.float().pow(2).sum())
    hs = [m.register_forward_hook(lambda m, a, o, n=name: measure(m, a, o, n)) for name, m in targets.items()]
    try:
        base = [torch.log_softmax(module(input_ids=w[i:i + 1]).logits[0].float(), -1) for i in range(len(w))]
    finally:
        for h in hs:
            h.remove()
    rows = {n: {"layer": n, "rel_error": (a / max(b, 1e-24)) ** 0.5, "kl": None} for n, (a, b) in err.items()}
    top = sorted(rows, key=lambda k: -rows[k]["rel_error"])[:refine]
    with progress(total=len(top), desc=f"layer sensitivity ({recipe.name})", enabled=verbose) as bar:
        for name in top:
            lin = targets[name]
            h = lin.register_forward_hook(lambda m, a, o, n=name: torch.nn.functional.linear(a[0], stored[n], m.bias))
            try:
                kl = [float((b.exp() * (b - torch.log_softmax(module(input_ids=w[i:i + 1]).logits[0].float(), -1)))
                            .sum(-1).mean()) for i, b in enumerate(base)]
            finally:
                h.remove()
            rows[name]["kl"] = sum(kl) / len(kl)
            bar.update(1)
    stored.clear()
    return sorted(rows.values(), key=lambda r: (r["kl"] is None, -(r["kl"] or 0), -r["rel_error"]))
