"""Static int8: weights and activations in int8, activation ranges observed on
calibration data (PT2E + X86 inductor quantizer + torch.compile)."""

from __future__ import annotations

import torch

from ..calibration import batches, prepare_calibration
from ..calibrators import pt2e_observer
from ..progress import progress
from ..recipes import StaticInt8
from . import pt2e
from .common import Quantized, float_operators, select_linears


def vnni() -> bool:
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def apply(model, recipe: StaticInt8, calibration=None, batch_size: int = 32, verbose: bool = True) -> Quantized:
    enc, fingerprint = prepare_calibration(model, calibration, recipe.num_samples)
    targets, kept = select_linears(model.module, recipe)
    notes = []
    # Without VNNI, u8 x s8 products are summed in int16 and can saturate: use 7-bit activations.
    reduce_range = not vnni()
    if reduce_range:
        notes.append("CPU without VNNI: activations use a 7-bit range (reduce_range) to avoid int16 saturation")
    example = {k: v[:2] for k, v in enc.items()}
    prepared = pt2e.prepare(model.module, example, dynamic=False, skip=list(kept), reduce_range=reduce_range,
                            activation_observer=pt2e_observer(recipe.calibrator, recipe.percentile),
                            per_channel_weights=recipe.per_channel_weights)
    n = enc["input_ids"].shape[0]
    with torch.no_grad(), progress(total=n, desc=f"calibrate ({recipe.calibrator})", enabled=verbose) as bar:
        for ids, am in batches(enc, batch_size):
            prepared(ids, am)
            bar.update(ids.shape[0])
    gm = pt2e.convert(prepared)
    status = pt2e.linear_status(gm)
    done = [k for k, q in status.items() if q]
    kept.update({k: "left in float by the PT2E quantizer (no matching pattern)" for k, q in status.items()
                 if not q and k not in kept})
    float_ops = float_operators(model.module, "static int8 (x86 inductor quantizer)")
    return Quantized(pt2e.Compiled(gm), recipe, done, kept, "oneDNN static int8 linear (PT2E + inductor)",
                     calibration=fingerprint, notes=notes, float_ops=float_ops)
