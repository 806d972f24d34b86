"""Calibrators: how an activation's quantization range is chosen from the
values seen on calibration data.

    est = RangeEstimator("percentile", percentile=99.99)
    for batch in activations: est.update(batch)
    lo, hi = est.range()

- minmax:          the smallest and largest value seen
- moving_average:  exponential moving average of each batch's min and max
- percentile:      the (100-p)th and pth percentiles of the values seen
- mse:             the clipping range that minimizes the mean squared error of
                   fake-quantizing the values seen (grid search over shrinking ranges)
- entropy:         the symmetric threshold that minimizes KL(P || Q) between the
                   histogram of |x| and its quantized version (TensorRT's method)

Percentile, MSE and entropy work on a uniform random sample of the values seen
(at most `max_samples`), so memory stays bounded however much data calibrates.
"""

from __future__ import annotations

import torch

from .errors import require
from .formats.affine import fake_quantize, qparams_from_range

CALIBRATORS = ("minmax", "moving_average", "percentile", "mse", "entropy")


class RangeEstimator:
    def __init__(self, method: str = "minmax", percentile: float = 99.99, averaging: float = 0.01, bits: int = 8,
                 symmetric: bool = False, max_samples: int = 1 << 20, bins: int = 2048, seed: int = 0):
        require(method in CALIBRATORS, f"calibrator must be one of {', '.join(CALIBRATORS)}, got {method!r}")
        require(50 < percentile <= 100, f"percentile must be in (50, 100], got {percentile}")
        require(0 < averaging <= 1, f"averaging must be in (0, 1], got {averaging}")
        self.method, self.percentile, self.averaging = method, percentile, averaging
        self.bits, self.symmetric, self.max_samples, self.bins = bits, symmetric, max_samples, bins
        self.min = self.max = self.ema_min = self.ema_max = None
        self.seen = 0
        self._sample = torch.empty(0)
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        lo, hi = torch.aminmax(x)
        if self.min is None:
            self.min, self.max, self.ema_min, self.ema_max = lo, hi, lo, hi
        else:
            self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
            c = self.averaging
            self.ema_min = self.ema_min + c * (lo - self.ema_min)
            self.ema_max = self.ema_max + c * (hi - self.ema_max)
        if self.method in ("percentile", "mse", "entropy"):
            self._reservoir(x)
        self.seen += x.numel()

    def _reservoir(self, x: torch.Tensor) -> None:
        """Keep a uniform sample of everything seen: each value survives with
        probability max_samples / seen (random keys, keep the smallest)."""
        total = self.seen + x.numel()
        if total <= self.max_samples:
            self._sample = torch.cat([self._sample, x])
            return
        keep_new = max(1, round(self.max_samples * x.numel() / total))
        keep_old = self.max_samples - keep_new
        new = x[torch.randperm(x.numel(), generator=self._gen)[:keep_new]]
        old = self._sample[torch.randperm(self._sample.numel(), generator=self._gen)[:keep_old]]
        self._sample = torch.cat([old, new])

    @property
    def sample(self) -> torch.Tensor:
        return self._sample

    def range(self) -> tuple[float, float]:
        require(self.min is not None, "the calibrator saw no data: calibration data is empty")
        lo, hi = float(self.min), float(self.max)
        if self.method == "moving_average":
            return float(self.ema_min), float(self.ema_max)
        if self.method == "percentile":
            return percentile_range(self._sample, self.percentile)
        if self.method == "mse":
            return mse_range(self._sample, lo, hi, self.bits, self.symmetric)
        if self.method == "entropy":
            t = entropy_threshold(self._sample, self.bits, self.bins)
            return max(lo, -t), min(hi, t)
        return lo, hi


def percentile_range(x: torch.Tensor, p: float) -> tuple[float, float]:
    q = torch.quantile(x.double(), torch.tensor([(100 - p) / 100, p / 100], dtype=torch.float64))
    return float(q[0]), float(q[1])


def quantization_mse(x: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    qp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
    return float(((fake_quantize(x, qp) - x) ** 2).mean())


def mse_range(x: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool, steps: int = 200) -> tuple[float, float]:
    """Shrink [lo, hi] by a common factor in (0, 1] and keep the best by MSE."""
    best, best_err = (lo, hi), float("inf")
    for i in range(1, steps + 1):
        a = i / steps
        err = quantization_mse(x, lo * a, hi * a, bits, symmetric)
        if err < best_err:
            best, best_err = (lo * a, hi * a), err
    return best


def entropy_threshold(x: torch.Tensor, bits: int = 8, bins: int = 2048) -> float:
    """Threshold on |x| minimizing KL(P||Q): P is the histogram clipped at the
    threshold (outliers added to the last bin), Q is P merged into 2^(bits-1)
    levels and spread back over the non-empty bins it came from."""
    a = x.abs().double()
    amax = float(a.max())
    if amax == 0:
        return 0.0
    hist = torch.histc(a, bins=bins, min=0, max=amax)
    width = amax / bins
    levels = 2 ** (bits - 1)
    best_i, best_kl = bins, float("inf")
    for i in range(levels, bins + 1):
        sliced = hist[:i]
        p = sliced.clone()
        p[-1] += hist[i:].sum()
        # merge the i bins into `levels` groups, then spread each group's mass
        # evenly over its non-empty bins
        group = torch.arange(i) * levels // i
        nonzero = (sliced > 0).double()
        mass = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, sliced)
        count = torch.zeros(levels, dtype=torch.float64).index_add_(0, group, nonzero)
        q = nonzero * (mass / count.clamp(min=1))[group]
        pn, qn = p / p.sum(), q / q.sum().clamp(min=1e-30)
        mask = pn > 0
        if bool((qn[mask] == 0).any()):
            continue
        kl = float((pn[mask] * (pn[mask] / qn[mask]).log()).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    return (best_i + 0.5) * width


def pt2e_observer(method: str, percentile: float = 99.99):
    """An activation observer class for torchao's PT2E quantizer that chooses
    its range with `method` (used by the static int8 recipe)."""
    from torchao.quantization.pt2e import MinMaxObserver

    class CalibratingObserver(MinMaxObserver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sym = self.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
            bits = int(torch.log2(torch.tensor(float(self.quant_max - self.quant_min + 1))).round())
            self.estimator = RangeEstimator(method, percentile=percentile, bits=bits, symmetric=sym)

        def forward(self, x_orig):
            if x_orig.numel():
                self.estimator.update(x_orig)
            return super().forward(x_orig)

        @torch.jit.export
        def calculate_qparams(self):
            if self.estimator.min is None:
                return super().calculate_qparams()
            lo, hi = self.estimator.range()
            return self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))

    CalibratingObserver.__name__ = f"CalibratingObserver_{method}"
    return CalibratingObserver
