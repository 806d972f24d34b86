"""Production inputs against calibration: per-layer clipping and population
stability.

At calibration time `profile(model, texts)` records, for the input of every
Linear layer over real (non-padding) tokens: the calibrated range (min, max),
and a histogram over decile edges of the values, with two tail bins outside
the range. A calibrated artifact stores this profile
(`activation_profile.json`).

Later, `DriftMonitor(profile, model)` runs new inputs through the float model
(the quantized graph's input ranges are the float model's, by construction),
fills the same histograms, and reports per layer:

- clip_rate: share of values outside the calibrated range (static int8
  saturates them);
- psi: population stability index, sum((p - q) * ln(p / q)) over the bins,
  with q the calibration share (floored at 1e-4).

Conventional PSI reading: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.
`recommend_recalibration` is True when any layer's PSI passes PSI_DRIFT or
the overall clip rate passes CLIP_DRIFT (thresholds checked on the default
classifier: README and tests/test_monitor.py).

Cost: clipping is counted on every value; the histograms use HIST_CHANNELS
evenly spaced input channels per layer, which keeps a monitored batch close
to the cost of the forward pass itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .activations import encode, forward_batches, linear_input_hooks
from .errors import require
from .progress import progress

PSI_MODERATE = 0.10
PSI_DRIFT = 0.25
CLIP_DRIFT = 1e-5
HIST_CHANNELS = 96          # histograms use this many evenly spaced input channels per layer
FLOOR = 1e-4


def _channels(c: int) -> torch.Tensor:
    """The input channels whose values fill the histograms (about HIST_CHANNELS, evenly spaced)."""
    return torch.arange(0, c, max(1, c // HIST_CHANNELS))


def _each_layer(model, texts: list[str], fn, batch_size: int = 32, desc: str = "", verbose: bool = False,
                enc: dict | None = None) -> None:
    """fn(layer, x [tokens, channels] of real tokens only) for every Linear input; the texts encoded as
    the model takes them (`activations.encode`: an LM reads each text's first 512 tokens), or `enc`."""
    enc = enc or encode(model, texts)
    mask = {"m": None}

    def hook(name, x):
        m = mask["m"]
        x = x.detach()
        x = x[m] if m is not None and x.dim() == 3 and x.shape[:2] == m.shape else x.reshape(-1, x.shape[-1])
        fn(name, x.float())

    with torch.inference_mode(), linear_input_hooks(model.module, hook), \
            progress(total=enc["input_ids"].shape[0], desc=desc, enabled=verbose) as bar:
        for b in forward_batches(model, enc, batch_size, before=lambda am: mask.update(m=am.bool())):
            bar.update(b)


def _bins(v: torch.Tensor, inner: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """Counts in [below lo, inner bins clipped to lo..hi, above hi]."""
    idx = torch.bucketize(v, inner, right=True) + 1
    idx = torch.where(v < lo, 0, torch.where(v > hi, len(inner) + 2, idx))
    return torch.bincount(idx, minlength=len(inner) + 3).cpu().numpy()


class Profile:
    """The profile's accumulator: observe(layer, x [tokens, channels]) for every Linear input,
    then result(). Kept apart from the pass that feeds it, so the LM calibration checks
    (which run the float model over GPTQ's windows anyway) can fill it on their own pass."""

    def __init__(self):
        self.st: dict[str, dict] = {}

    def observe(self, name: str, x: torch.Tensor) -> None:
        """x on any device (a GPU's stays there: only the histogram counts come back)."""
        s = self.st.get(name)
        v = x[:, _channels(x.shape[1]).to(x.device)].reshape(-1)
        if s is None:
            inner = torch.unique(torch.quantile(v[:1 << 20].cpu(), torch.linspace(0.1, 0.9, 9)))
            s = self.st[name] = {"min": 0.0, "max": 0.0, "inner": inner, "counts": np.zeros(len(inner) + 3, np.int64)}
        s["min"], s["max"] = min(s["min"], float(x.min())), max(s["max"], float(x.max()))
        s["counts"] += _bins(v, s["inner"].to(v.device), -math.inf, math.inf)

    def result(self, n: int, unit: str) -> dict:
        layers = {name: {"min": s["min"], "max": s["max"], "inner_edges": s["inner"].tolist(),
                         "share": (s["counts"] / max(1, s["counts"].sum())).tolist()} for name, s in self.st.items()}
        return {"n": n, "channels_per_layer": HIST_CHANNELS, "layers": layers, "unit": unit}


_WINDOW_PROFILES: dict[tuple, dict] = {}   # (model, windows) -> profile: one float pass serves every GPTQ candidate


def _key(model, windows: torch.Tensor) -> tuple:
    import hashlib
    return id(model.module), getattr(model, "sha", None), hashlib.sha256(windows.numpy().tobytes()).hexdigest()


def remember(model, windows: torch.Tensor, prof: Profile) -> None:
    """Keep a profile of `windows` filled elsewhere (one model's at a time: a profile is a few MB)."""
    _WINDOW_PROFILES.clear()
    _WINDOW_PROFILES[_key(model, windows)] = prof.result(int(windows.shape[0]), f"windows of {windows.shape[1]} tokens")


def profile(model, texts: list[str], batch_size: int = 32, verbose: bool = False,
            windows: torch.Tensor | None = None) -> dict:
    """Calibration-time activation profile, in one pass: per layer the range
    (min, max over all channels), decile edges of the first batch's values,
    and the share of all calibration values in each bin. For an LM, `windows`
    (GPTQ's calibration token windows) are what it saw, profiled as they are,
    once per float model and windows (the calibration checks' pass fills it)."""
    import copy
    if windows is not None and _key(model, windows) in _WINDOW_PROFILES:
        return copy.deepcopy(_WINDOW_PROFILES[_key(model, windows)])
    enc = None if windows is None else {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
    require(len(texts) > 0 or enc is not None, "cannot profile activations of empty calibration data")
    prof = Profile()
    _each_layer(model, list(texts), prof.observe, batch_size, "activation profile", verbose, enc)
    if windows is not None:
        remember(model, windows, prof)
    return prof.result(len(texts) if enc is None else int(windows.shape[0]),
                       "examples" if enc is None else f"windows of {windows.shape[1]} tokens")


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
        self.layers = {name: (torch.tensor(p["inner_edges"]), p["min"], p["max"]) for name, p in prof["layers"].items()}
        self.counts = {name: np.zeros(len(p["share"]), dtype=np.int64) for name, p in prof["layers"].items()}
        self.clipped = {name: 0 for name in self.layers}
        self.values = {name: 0 for name in self.layers}
        self.n = 0

    @classmethod
    def from_artifact(cls, folder: str | Path, model) -> "DriftMonitor":
        f = Path(folder) / "activation_profile.json"
        require(f.is_file(), f"{folder} has no activation_profile.json: only calibrated artifacts "
                             "(static int8, GPTQ) carry calibration statistics to monitor against")
        return cls(json.loads(f.read_text()), model)

    def _observe(self, name, x):
        if name not in self.layers:
            return
        inner, lo, hi = self.layers[name]
        self.clipped[name] += int(((x < lo) | (x > hi)).sum())      # every channel: outliers decide clipping
        self.values[name] += x.numel()
        self.counts[name] += _bins(x[:, _channels(x.shape[1])].reshape(-1), inner, lo, hi)

    def update(self, texts: list[str], batch_size: int = 32, verbose: bool = False) -> None:
        require(len(texts) > 0, "no inputs to monitor")
        _each_layer(self.model, list(texts), self._observe, batch_size, "drift monitor", verbose)
        self.n += len(texts)

    def report(self) -> dict:
        require(self.n > 0, "the monitor has seen no inputs yet: call update(texts) first")
        layers = []
        for name, c in self.counts.items():
            share = c / max(1, c.sum())
            layers.append({"layer": name, "psi": psi(share, self.prof["layers"][name]["share"]),
                           "clip_rate": self.clipped[name] / max(1, self.values[name])})
        layers.sort(key=lambda r: -r["psi"])
        psis = np.array([r["psi"] for r in layers])
        clip_rate = sum(self.clipped.values()) / max(1, sum(self.values.values()))
        over = int((psis > PSI_DRIFT).sum())
        reasons = []
        if over:
            reasons.append(f"{over} layer(s) with PSI over {PSI_DRIFT} (worst {layers[0]['layer']}: {layers[0]['psi']:.2f})")
        if clip_rate > CLIP_DRIFT:
            reasons.append(f"{clip_rate:.1e} of activation values fall outside the calibrated ranges (> {CLIP_DRIFT:g})")
        return {"inputs": self.n, "calibration_n": self.prof["n"], "calibration_unit": self.prof.get("unit", "examples"),
                "median_psi": float(np.median(psis)),
                "max_psi": float(psis.max()), "layers_over_moderate": int((psis > PSI_MODERATE).sum()),
                "layers_over_drift": over, "n_layers": len(layers),
                "clip_rate": clip_rate, "worst_layers": layers[:10],
                "recommend_recalibration": bool(reasons), "reasons": reasons,
                "remedy": ("recalibrate on a sample of these inputs (quantgate quantize --calibration FILE) and "
                           "compare the new version against this one") if reasons else ""}
