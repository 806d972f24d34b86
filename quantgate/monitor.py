"""Production inputs against calibration: per-layer clipping and population
stability.

At calibration time `profile(model, texts)` records, for the input of every
Linear layer over real (non-padding) tokens: the calibrated range (min, max),
and a histogram over decile edges of a value sample, with two tail bins
outside the range. A calibrated artifact stores this profile
(`activation_profile.json`).

Later, `DriftMonitor(profile, model)` runs new inputs through the float model
(the quantized graph's input ranges are the float model's, by construction),
fills the same histograms, and reports per layer:

- clip_rate: share of values outside the calibrated range (static int8
  saturates them);
- psi: population stability index, sum((p - q) * ln(p / q)) over the bins,
  with q the calibration share (floored at 1e-4).

Conventional PSI reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.
`recommend_recalibration` is True when the median layer's PSI passes
PSI_DRIFT or the overall clip rate passes CLIP_DRIFT (thresholds measured on
the default classifier: README and tests/test_monitor.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .activations import linear_input_hooks
from .calibration import batches
from .errors import require
from .progress import progress

PSI_MODERATE = 0.10
PSI_DRIFT = 0.25
CLIP_DRIFT = 1e-4
SAMPLE_PER_LAYER = 20000
FLOOR = 1e-4


def _each_layer(model, texts: list[str], fn, batch_size: int = 32, desc: str = "", verbose: bool = False) -> None:
    """fn(layer, values of real tokens as a float32 1-D tensor) for every Linear input."""
    enc = model.encode(texts)
    mask = {"m": None}

    def hook(name, x):
        m = mask["m"]
        x = x.detach().float()
        if m is not None and x.dim() == 3 and x.shape[:2] == m.shape:
            x = x[m]
        fn(name, x.reshape(-1))

    with torch.inference_mode(), linear_input_hooks(model.module, hook), \
            progress(total=len(texts), desc=desc, enabled=verbose) as bar:
        for ids, am in batches(enc, batch_size):
            mask["m"] = am.bool()
            model.module(ids, am)
            bar.update(ids.shape[0])


def profile(model, texts: list[str], batch_size: int = 32, verbose: bool = False) -> dict:
    """Calibration-time activation profile: per layer range and histogram."""
    require(len(texts) > 0, "cannot profile activations of empty calibration data")
    samples: dict[str, list[torch.Tensor]] = {}
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)

    def fn(name, v):
        lo[name] = min(lo.get(name, 0.0), float(v.min()))
        hi[name] = max(hi.get(name, 0.0), float(v.max()))
        k = min(v.numel(), max(1, SAMPLE_PER_LAYER // 8))
        samples.setdefault(name, []).append(v[torch.randint(0, v.numel(), (k,), generator=gen)])

    _each_layer(model, list(texts), fn, batch_size, "activation profile", verbose)
    layers = {}
    for name, parts in samples.items():
        s = torch.cat(parts).numpy()
        inner = np.unique(np.quantile(s, np.linspace(0.1, 0.9, 9)))
        edges = [lo[name], *inner.tolist(), hi[name]]
        layers[name] = {"min": lo[name], "max": hi[name], "edges": edges}
    prof = {"n": len(texts), "layers": layers}
    counts = _histograms(model, list(texts), prof, batch_size, verbose=False)
    for name, c in counts.items():
        layers[name]["share"] = (c["bins"] / max(1, c["bins"].sum())).tolist()
    return prof


def _histograms(model, texts: list[str], prof: dict, batch_size: int, verbose: bool) -> dict:
    """Per layer: counts in the profile's bins (tail, inner bins..., tail)."""
    out = {name: {"bins": np.zeros(len(p["edges"]) + 1, dtype=np.int64)} for name, p in prof["layers"].items()}
    edges = {name: torch.tensor(p["edges"], dtype=torch.float32) for name, p in prof["layers"].items()}

    def fn(name, v):
        if name not in out:
            return
        e = edges[name]
        idx = torch.bucketize(v, e[1:-1], right=True) + 1        # 1..len(inner)+1 inside the range
        idx = torch.where(v < e[0], 0, torch.where(v > e[-1], len(e), idx))
        out[name]["bins"] += torch.bincount(idx, minlength=len(e) + 1).numpy()

    _each_layer(model, texts, fn, batch_size, "drift monitor", verbose)
    return out


def psi(p: np.ndarray, q: np.ndarray) -> float:
    p = np.maximum(np.asarray(p, float), FLOOR)
    q = np.maximum(np.asarray(q, float), FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


class DriftMonitor:
    """The library hook: feed it the texts a service sees (all, or a sample),
    then read `report()`. Counts accumulate across `update` calls."""

    def __init__(self, prof: dict, model):
        require(prof.get("layers"), "this activation profile is empty: re-quantize with calibration data")
        self.prof, self.model = prof, model
        self.counts = {name: np.zeros(len(p["edges"]) + 1, dtype=np.int64) for name, p in prof["layers"].items()}
        self.n = 0

    @classmethod
    def from_artifact(cls, folder: str | Path, model) -> "DriftMonitor":
        f = Path(folder) / "activation_profile.json"
        require(f.is_file(), f"{folder} has no activation_profile.json: only calibrated artifacts "
                             "(static-int8) carry calibration statistics to monitor against")
        return cls(json.loads(f.read_text()), model)

    def update(self, texts: list[str], batch_size: int = 32, verbose: bool = False) -> None:
        require(len(texts) > 0, "no inputs to monitor")
        for name, c in _histograms(self.model, list(texts), self.prof, batch_size, verbose).items():
            self.counts[name] += c["bins"]
        self.n += len(texts)

    def report(self) -> dict:
        require(self.n > 0, "the monitor has seen no inputs yet: call update(texts) first")
        layers = []
        total = clipped = 0
        for name, c in self.counts.items():
            share = c / max(1, c.sum())
            clip = float(share[0] + share[-1])
            total, clipped = total + int(c.sum()), clipped + int(c[0] + c[-1])
            layers.append({"layer": name, "psi": psi(share, self.prof["layers"][name]["share"]), "clip_rate": clip})
        layers.sort(key=lambda r: -r["psi"])
        psis = np.array([r["psi"] for r in layers])
        clip_rate = clipped / max(1, total)
        median_psi = float(np.median(psis))
        reasons = []
        if median_psi > PSI_DRIFT:
            reasons.append(f"median layer PSI {median_psi:.2f} > {PSI_DRIFT}")
        if clip_rate > CLIP_DRIFT:
            reasons.append(f"{clip_rate:.1e} of activation values fall outside the calibrated ranges (> {CLIP_DRIFT:g})")
        return {"inputs": self.n, "calibration_n": self.prof["n"], "median_psi": median_psi,
                "max_psi": float(psis.max()), "layers_over_moderate": int((psis > PSI_MODERATE).sum()),
                "layers_over_drift": int((psis > PSI_DRIFT).sum()), "n_layers": len(layers),
                "clip_rate": clip_rate, "worst_layers": layers[:10],
                "recommend_recalibration": bool(reasons), "reasons": reasons,
                "remedy": ("recalibrate on a sample of these inputs (quantgate quantize --calibration FILE) and "
                           "compare the new version against this one") if reasons else ""}
