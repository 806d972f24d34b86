"""QLoRA (Dettmers et al., 2023): LoRA adapters trained on a frozen NF4 base.

The targeted Linear layers become NF4Linear (4-bit NormalFloat, double
quantization; frozen), peft injects LoRA adapters into them, and only the
adapters train, under mixed precision: fp16 autocast with a gradient scaler on
CUDA, bf16 autocast on a CPU with native bf16, fp32 elsewhere (bf16 emulated
on AVX2 is slower than fp32). The result is the NF4 base plus adapters, saved
as two files (weights.safetensors, adapters.safetensors); or with `merge`, the
adapters folded into float weights (a float model: quantize it again to serve
it low-bit)."""

from __future__ import annotations

import copy
import fnmatch
import random
import time

import torch

from ..calibration import lm_windows
from ..errors import require
from ..finetune import autocast, choose_precision
from ..progress import progress
from ..recipes import QLoRA
from .common import Quantized, float_operators, select_linears
from .nf4 import to_nf4
from .weight_only import kernel_summary, set_module


def lora_config(spec: dict):
    from peft import LoraConfig
    return LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"],
                      target_modules=list(spec["target_modules"]), bias="none")


def attach_adapters(hf: torch.nn.Module, spec: dict) -> torch.nn.Module:
    """Inject (untrained) LoRA adapters as `spec` describes; a state dict fills them."""
    from peft import inject_adapter_in_model
    return inject_adapter_in_model(lora_config(spec), hf)


def lora_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer
    return {n: m for n, m in module.named_modules() if isinstance(m, LoraLayer)}


def merge(module: torch.nn.Module) -> torch.nn.Module:
    """Fold every adapter into a float Linear: W = dequant(base) + B A x scaling."""
    for name, m in lora_layers(module).items():
        base = m.get_base_layer()
        w = base.weight.detach().float().clone()
        for a in m.active_adapters:
            w += (m.lora_B[a].weight.float() @ m.lora_A[a].weight.float()) * m.scaling[a]
        lin = torch.nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(w)
            if base.bias is not None:
                lin.bias.copy_(base.bias)
        set_module(module, name, lin.requires_grad_(False))
    return module


def apply(model, recipe: QLoRA, calibration=None, train=None) -> Quantized:
    require(train is not None and len(train) > 0, "QLoRA trains adapters: give training text (--train FILE)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision(device, recipe.precision)
    qm = copy.deepcopy(model.module).eval()
    targets, kept = select_linears(qm, recipe)
    targets = {n: m for n, m in targets.items()
               if any(n == t or n.endswith("." + t) or fnmatch.fnmatchcase(n, t) for t in recipe.targets)}
    require(targets, f"QLoRA: no Linear layer matches targets {list(recipe.targets)}")
    t0 = time.perf_counter()
    layers = to_nf4(qm, recipe, targets)
    for p in qm.parameters():
        p.requires_grad_(False)
    spec = {"r": recipe.rank, "lora_alpha": recipe.alpha, "lora_dropout": recipe.dropout,
            "target_modules": sorted(targets)}
    torch.manual_seed(recipe.seed)
    qm = attach_adapters(qm, spec).to(device)
    params = [p for n, p in qm.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    windows, _ = lm_windows(model.tokenizer, train, recipe.steps * recipe.batch_size, recipe.seq_len,
                            where="QLoRA training text")
    order = list(range(len(windows)))
    random.Random(recipe.seed).shuffle(order)
    opt = torch.optim.AdamW(params, lr=recipe.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    losses = []
    qm.train()
    with progress(total=recipe.steps, desc=f"QLoRA {recipe.name}", enabled=True) as bar:
        for step in range(recipe.steps):
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            batch = windows[idx].to(device)
            with autocast(device, precision):
                loss = qm(input_ids=batch, labels=batch, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss))
            bar.update(1, loss=f"{losses[-1]:.3f}")
    qm = qm.eval().to("cpu")
    seconds = time.perf_counter() - t0
    notes = [f"trained {len(params)} adapter tensors ({sum(p.numel() for p in params):,} parameters) for "
             f"{recipe.steps} steps of {recipe.batch_size} x {recipe.seq_len} tokens in {precision} on {device}; "
             f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"]
    if recipe.merge:
        qm = merge(qm)
        notes.append("adapters merged into float weights: this model is float; quantize it again to serve it low-bit")
        kernel = "fp32 matmul (merged)"
    else:
        kernel = kernel_summary(layers) + " + LoRA adapters (fp32)"
    q = Quantized(qm, recipe, list(targets), kept, kernel, notes=notes,
                  float_ops=float_operators(model.module, "weight-only quantization (activations stay float)"))
    q.seconds = seconds
    q.adapters = None if recipe.merge else spec
    q.extra["training"] = {"losses": losses, "precision": precision, "device": device,
                  "train": {"source": train.source, "fingerprint": train.fingerprint(), "n": len(train)}}
    return q
