"""Quantization-aware training through PT2E: export, insert fake quantizers
(straight-through estimator for rounding), fine-tune on the training data with
mixed precision (fp16 with a gradient scaler on CUDA, bf16 on a CPU with native
bf16), then convert to the real int8 graph and compile it.

Weights can be trained on a 4-bit grid (`weight_bits=4`, symmetric per channel,
values -8..7) with int8 activations; the converted graph then stores those
values in int8 and runs oneDNN's int8 kernels: the accuracy is the 4-bit
model's, the memory and speed are int8's.
"""

from __future__ import annotations

import copy
import math

import torch

from ..calibration import batches
from ..data import Dataset
from ..errors import QuantgateError, require
from ..finetune import autocast, choose_precision
from ..models import label_ids
from ..progress import progress
from ..recipes import QAT
from . import pt2e
from .common import Quantized, compute_device, float_operators, select_linears


def ptq_same_config(model, recipe: QAT, calibration: Dataset, skip: list[str]) -> "pt2e.Compiled":
    """Post-training quantization with the QAT recipe's exact number formats
    (the reference QAT's recovery is measured against)."""
    enc = model.encode(calibration.head(256).texts)
    quantizer = pt2e.x86_quantizer(reduce_range=pt2e.reduce_range(), weight_bits=recipe.weight_bits)
    prepared = pt2e.prepare(model.module, {k: v[:2] for k, v in enc.items()}, quantizer, skip)
    with torch.no_grad():
        for ids, am in batches(enc, 32):
            prepared(ids, am)
    return pt2e.finish(prepared, {n: "" for n in skip})[0]


def transfer(trained: torch.fx.GraphModule, target: torch.fx.GraphModule) -> None:
    """Copy trained weights and fake-quantizer state (scales, zero points, observed
    ranges) into an identically prepared graph exported on another device."""
    state = {k: v.detach().to("cpu") for k, v in trained.state_dict().items()}
    missing, unexpected = target.load_state_dict(state, strict=False)
    require(not missing and not unexpected,
            f"QAT graphs differ between devices (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "train with device: cpu")


def apply(model, recipe: QAT, calibration=None, train: Dataset | None = None, verbose: bool = True) -> Quantized:
    """Train the fake-quantized graph on the training device (CUDA when present,
    fp16 + gradient scaler there), then load its state into the same graph
    exported on CPU and convert that one: the int8 kernels are CPU's, and an
    exported graph keeps the device it was traced on."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    if train is None or len(train) == 0:
        raise QuantgateError("QAT needs training data (labelled examples to fine-tune on); "
                             "it never falls back to post-training quantization. Pass train=... (CLI: --train FILE)")
    y_all = label_ids(model, train.labels, where="QAT training data")
    targets, kept = select_linears(model.module, recipe)
    reduce_range = pt2e.reduce_range()
    device = compute_device(recipe.device, "QAT")
    precision = choose_precision(device, recipe.precision)
    enc = model.encode(train.texts)
    example = {k: v[:2] for k, v in enc.items()}

    def prepared_on(dev: str):
        # a copy: the exported graph shares parameter storage with the module it was traced from,
        # and training must not change the user's float model
        module = copy.deepcopy(model.module).to(dev)
        quantizer = pt2e.x86_quantizer(reduce_range=reduce_range, weight_bits=recipe.weight_bits, qat=True)
        return pt2e.prepare(module, {k: v.to(dev) for k, v in example.items()}, quantizer, list(kept), qat=True)

    prepared = prepared_on(device)
    if recipe.freeze_ranges:
        # calibrate the quantization ranges first (as post-training quantization would), then fix
        # them: training then adapts the weights to a stable grid instead of chasing moving ranges
        from torchao.quantization.pt2e import disable_observer
        move_exported_model_to_eval(prepared)
        with torch.no_grad():
            for ids, am in batches({k: v[:256] for k, v in enc.items()}, recipe.batch_size):
                prepared(ids.to(device), am.to(device))
        prepared.apply(disable_observer)
    move_exported_model_to_train(prepared)
    params = [p for p in prepared.parameters() if p.requires_grad and p.is_floating_point()]
    require(params, "the exported model has no trainable parameters for QAT")
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    g = torch.Generator().manual_seed(recipe.seed)
    n = len(train)
    steps = recipe.steps or recipe.epochs * math.ceil(n / recipe.batch_size)
    losses = []
    # dropout draws from the global generator: seed it (in a fork, leaving the caller's state alone)
    # so that the same recipe on the same data trains the same model
    with torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(recipe.seed)
        with progress(total=steps, desc=f"QAT ({precision}, {device})", enabled=verbose) as bar:
            step = 0
            while step < steps:
                for idx in torch.randperm(n, generator=g).split(recipe.batch_size):
                    if step >= steps:
                        break
                    with autocast(device, precision):
                        logits = prepared(enc["input_ids"][idx].to(device), enc["attention_mask"][idx].to(device))
                    loss = torch.nn.functional.cross_entropy(logits.float(), y_all[idx].to(device))
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    losses.append(loss.item())
                    step += 1
                    bar.update(1, loss=f"{loss.item():.3f}")
    final = prepared
    if device != "cpu":
        final = prepared_on("cpu")
        transfer(prepared, final)
        del prepared
    move_exported_model_to_eval(final)
    qm, done = pt2e.finish(final, kept)
    notes = [f"QAT: {steps} steps on {n} examples, {precision} on {device}, loss "
             f"{sum(losses[:5]) / len(losses[:5]):.3f} -> {sum(losses[-5:]) / len(losses[-5:]):.3f}"]
    if recipe.weight_bits != 8:
        notes.append(f"weights trained on a {recipe.weight_bits}-bit grid and stored in int8 for oneDNN's int8 kernels")
    if reduce_range:
        notes.append("CPU without VNNI: activations use a 7-bit range (reduce_range) to avoid int16 saturation")
    out = Quantized(qm, recipe, done, kept, "oneDNN static int8 linear (PT2E QAT + inductor)",
                    notes=notes, float_ops=float_operators(model.module, "QAT (x86 inductor quantizer)"))
    out.train_losses = losses
    return out
