"""Static int8: weights and activations in int8, activation ranges observed on
calibration data (PT2E + X86 inductor quantizer + torch.compile)."""

from __future__ import annotations

import torch

from ..calibration import batches, prepare_calibration
from ..calibrators import pt2e_observer
from ..monitor import profile
from ..progress import progress
from ..recipes import StaticInt8
from . import pt2e
from .common import Quantized, float_operators, select_linears


def apply(model, recipe: StaticInt8, calibration=None, train=None, batch_size: int = 32, verbose: bool = True) -> Quantized:
    enc, fingerprint = prepare_calibration(model, calibration, recipe.num_samples)
    targets, kept = select_linears(model.module, recipe)
    notes = []
    reduce_range = pt2e.reduce_range()
    if reduce_range:
        notes.append("CPU without VNNI: activations use a 7-bit range (reduce_range) to avoid int16 saturation")
    example = {k: v[:2] for k, v in enc.items()}
    quantizer = pt2e.x86_quantizer(reduce_range=reduce_range, per_channel_weights=recipe.per_channel_weights,
                                   symmetric_activations=recipe.symmetric_activations,
                                   activation_observer=pt2e_observer(recipe.calibrator, recipe.percentile))
    prepared = pt2e.prepare(model.module, example, quantizer, skip=list(kept))
    n = enc["input_ids"].shape[0]
    with torch.no_grad(), progress(total=n, desc=f"calibrate ({recipe.calibrator})", enabled=verbose) as bar:
        for ids, am in batches(enc, batch_size):
            prepared(ids, am)
            bar.update(ids.shape[0])
    qm, done = pt2e.finish(prepared, kept)
    float_ops = float_operators(model.module, "static int8 (x86 inductor quantizer)")
    return Quantized(qm, recipe, done, kept, "oneDNN static int8 linear (PT2E + inductor)",
                     calibration=fingerprint, notes=notes, float_ops=float_ops,
                     activation_profile=profile(model, calibration.head(recipe.num_samples).texts, batch_size))
