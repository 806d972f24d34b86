"""Is the calibration data good enough? Three checks on the float model's
activations at the input of every Linear layer (what static int8 quantizes):

- sufficiency: per-layer ranges from growing prefixes of the calibration data;
  converged when doubling the data no longer moves them.
- coverage: evaluation activations against the calibrated ranges: the share of
  values clipped per layer, and which slices clip most; plus slice values the
  evaluation data has and the calibration data lacks.
- outliers: per input channel, the channel's peak magnitude against the layer's
  typical channel peak, its max/median magnitude ratio and its kurtosis.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from .calibration import batches
from .data import Dataset
from .progress import progress

CONVERGED_CHANGE = 0.10      # ranges that move less than this on the last doubling have converged
MIN_SAMPLES = 32
CONVERGED_SHARE = 0.90       # ... in at least this share of layers (min-max ranges of heavy tails creep up slowly)
CLIP_RATE_WARN = 1e-5        # share of evaluation activation values outside the calibrated ranges
OUTLIER_RATIO_INFO = 10.0    # channel peak / median channel peak
OUTLIER_RATIO_WARN = 50.0
TOKEN_SAMPLE = 1024          # tokens kept per layer for medians


@contextmanager
def linear_input_hooks(module: torch.nn.Module, fn):
    """Call fn(layer_name, input_tensor) before every Linear layer runs."""
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: fn(n, args[0]))
               for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _run(model, data: Dataset, fn, batch_size: int, desc: str, verbose: bool):
    enc = model.encode(data.texts)
    state = {"offset": 0}

    def hook(name, x):
        fn(name, x, state["offset"])

    with torch.inference_mode(), linear_input_hooks(model.module, hook), \
            progress(total=len(data), desc=desc, enabled=verbose) as bar:
        for ids, am in batches(enc, batch_size):
            model.module(ids, am)
            state["offset"] += ids.shape[0]
            bar.update(ids.shape[0])


def calibration_stats(model, calib: Dataset, batch_size: int = 32, verbose: bool = False) -> dict:
    """One pass over the calibration data: per layer, per-example min and max
    (for prefix ranges), per-channel peaks, and a random sample of tokens
    (for medians and kurtosis)."""
    n = len(calib)
    st: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(0)

    def fn(name, x, off):
        x = x.detach().float()
        b, c = x.shape[0], x.shape[-1]
        s = st.setdefault(name, {"ex_min": np.zeros(n), "ex_max": np.zeros(n), "ch_peak": torch.zeros(c),
                                 "tokens": []})
        flat = x.reshape(b, -1)
        s["ex_min"][off:off + b] = flat.amin(dim=1).numpy()
        s["ex_max"][off:off + b] = flat.amax(dim=1).numpy()
        t = x.reshape(-1, c)
        s["ch_peak"] = torch.maximum(s["ch_peak"], t.abs().amax(dim=0))
        kept = sum(len(v) for v in s["tokens"])
        if kept < TOKEN_SAMPLE:
            idx = torch.randperm(t.shape[0], generator=gen)[: TOKEN_SAMPLE - kept]
            s["tokens"].append(t[idx].clone())

    _run(model, calib, fn, batch_size, "calibration statistics", verbose)
    return st


def sufficiency(st: dict, n: int) -> dict:
    """Range width per layer at prefixes 1, 2, 4, ... n of the calibration
    data (the curve), whether the last doubling still moved any layer's range
    by more than CONVERGED_CHANGE, and a recommended minimum sample count."""
    sizes = sorted({min(n, 2 ** k) for k in range(0, int(math.ceil(math.log2(max(n, 1)))) + 1)})
    half = n // 2
    curve, change = {}, {}
    for name, s in st.items():
        # range width (always containing 0) after each prefix of the calibration examples
        width = np.maximum(np.maximum.accumulate(s["ex_max"]), 0) - np.minimum(np.minimum.accumulate(s["ex_min"]), 0)
        curve[name] = [float(width[k - 1] / width[-1]) if width[-1] > 0 else 1.0 for k in sizes]
        change[name] = float(1 - width[half - 1] / width[-1]) if half >= 1 and width[-1] > 0 else 1.0
    worst = sorted(change.items(), key=lambda kv: -kv[1])
    converged_layers = [k for k, v in change.items() if v <= CONVERGED_CHANGE]
    share = len(converged_layers) / max(1, len(change))
    # smallest prefix from which enough layers' ranges are within CONVERGED_CHANGE of the final ones
    within = [k for i, k in enumerate(sizes)
              if np.mean([c[i] >= 1 - CONVERGED_CHANGE for c in curve.values()]) >= CONVERGED_SHARE]
    converged = n >= MIN_SAMPLES and share >= CONVERGED_SHARE
    recommended = max(MIN_SAMPLES, within[0] if within and converged else 2 * n)
    return {"sizes": sizes, "curve": curve, "last_doubling_change": dict(worst[:10]), "converged": converged,
            "n": n, "recommended_min_samples": int(recommended),
            "converged_share": share}


def coverage(model, st: dict, data: Dataset, batch_size: int = 32, verbose: bool = False) -> dict:
    """Share of evaluation activations outside each layer's calibrated (min-max)
    range, overall and per slice value."""
    ranges = {k: (float(v["ex_min"].min()), float(v["ex_max"].max())) for k, v in st.items()}
    n = len(data)
    clipped = {k: np.zeros(n) for k in ranges}
    per_ex_values = {}

    def fn(name, x, off):
        lo, hi = ranges[name]
        b = x.shape[0]
        flat = x.detach().float().reshape(b, -1)
        clipped[name][off:off + b] = ((flat < lo) | (flat > hi)).sum(dim=1).numpy()
        per_ex_values[name] = flat.shape[1]

    _run(model, data, fn, batch_size, "coverage", verbose)
    layers = {k: float(v.sum() / (per_ex_values[k] * n)) for k, v in clipped.items()}
    total = sum(clipped.values())
    per_value = sum(per_ex_values.values())
    slices = {}
    for col, values in data.slices.items():
        values = np.asarray(values)
        slices[col] = sorted(({"value": v, "clip_rate": float(total[values == v].sum() / (per_value * (values == v).sum()))}
                              for v in sorted(set(values.tolist()))), key=lambda r: -r["clip_rate"])
    worst = sorted(layers.items(), key=lambda kv: -kv[1])
    return {"clip_rate": float(total.sum() / (per_value * n)), "worst_layers": dict(worst[:10]), "slices": slices}


def outliers(st: dict, top: int = 10) -> list[dict]:
    """Layers ranked by their worst input channel's peak against the median channel peak."""
    rows = []
    for name, s in st.items():
        peak = s["ch_peak"]
        med_peak = float(peak.median())
        c = int(peak.argmax())
        col = torch.cat(s["tokens"])[:, c].double()
        centred = col - col.mean()
        var = float((centred ** 2).mean())
        kurt = float((centred ** 4).mean()) / var ** 2 if var > 0 else None
        med = float(col.abs().median())
        rows.append({"layer": name, "channel": c, "peak": float(peak[c]), "median_channel_peak": med_peak,
                     "channel_ratio": float(peak[c]) / med_peak if med_peak > 0 else None,
                     "max_over_median": float(peak[c]) / med if med > 0 else None, "kurtosis": kurt})
    return sorted(rows, key=lambda r: -(r["channel_ratio"] or 0))[:top]


def missing_slices(calib: Dataset, data: Dataset) -> dict[str, list[str]]:
    """Slice values present in the evaluation data and absent from calibration."""
    out = {}
    for col, values in data.slices.items():
        if col in calib.slices:
            gone = sorted(set(values) - set(calib.slices[col]))
            if gone:
                out[col] = gone
    return out


def check_calibration(model, calib: Dataset, data: Dataset, batch_size: int = 32, verbose: bool = False) -> dict:
    st = calibration_stats(model, calib, batch_size, verbose)
    return {"n": len(calib), "sufficiency": sufficiency(st, len(calib)),
            "coverage": coverage(model, st, data, batch_size, verbose),
            "missing_slices": missing_slices(calib, data), "outliers": outliers(st)}
