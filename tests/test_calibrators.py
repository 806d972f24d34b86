"""Each calibrator returns its own correct range on synthetic heavy-tailed data
whose right answer is known or computed independently here."""

import numpy as np
import pytest
import torch

from quantgate.calibrators import CALIBRATORS, RangeEstimator, entropy_threshold
from quantgate.errors import QuantgateError

g = torch.Generator().manual_seed(0)
GAUSS = torch.randn(200_000, generator=g)
OUTLIERS = GAUSS.clone()
OUTLIERS[:10], OUTLIERS[10:20] = 40.0, -40.0                  # 0.01% of values, 40 sigma out
torch.manual_seed(0)
STUDENT = torch.distributions.StudentT(3.0).sample((200_000,))  # heavy tails everywhere


def run(method, x, batches=10, **kw):
    e = RangeEstimator(method, **kw)
    for b in x.split(len(x) // batches):
        e.update(b)
    return e.range()


def test_minmax_is_the_extremes():
    assert run("minmax", OUTLIERS) == (-40.0, 40.0)


def test_moving_average_follows_the_recurrence():
    lo, hi = run("moving_average", OUTLIERS, averaging=0.1)
    mins = [float(b.min()) for b in OUTLIERS.split(20_000)]
    ema = mins[0]
    for m in mins[1:]:
        ema += 0.1 * (m - ema)
    assert lo == pytest.approx(ema, rel=1e-5)
    assert -40 < lo < -4 and 4 < hi < 40        # the outliers, all in batch one, fade


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy_and_the_normal_quantile(p):
    lo, hi = run("percentile", OUTLIERS, percentile=p)
    ref = np.percentile(OUTLIERS.numpy().astype(np.float64), [100 - p, p])
    assert (lo, hi) == pytest.approx(tuple(ref), rel=1e-6)
    z = {99.0: 2.326, 99.9: 3.090, 99.99: 3.719}[p]
    assert hi == pytest.approx(z, rel=0.06) and lo == pytest.approx(-z, rel=0.06)


def _np_mse(x, t, bits):
    s = t / ((2 ** bits - 1) / 2)
    q = np.clip(np.round(x / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s
    return ((q - x) ** 2).mean()


def _brute_force_mse(x, bits, steps=1000):
    """Independent reference: symmetric clipping threshold search in numpy."""
    amax = np.abs(x).max()
    errs = [(_np_mse(x, t, bits), t) for t in np.linspace(amax / steps, amax, steps)]
    return min(errs)


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_finds_the_error_minimizing_clip(bits):
    lo, hi = run("mse", STUDENT, bits=bits, symmetric=True)
    x = STUDENT.numpy().astype(np.float64)
    best_err, best_t = _brute_force_mse(x, bits)
    assert _np_mse(x, max(-lo, hi), bits) <= best_err * 1.01     # as good as the finest search
    assert max(-lo, hi) == pytest.approx(best_t, rel=0.05)
    # heavy tails: clipping pays, much more so with 16 levels than with 256
    assert max(-lo, hi) < (0.3 if bits == 4 else 0.9) * float(STUDENT.abs().max())


def test_mse_keeps_rare_huge_outliers_at_8_bits():
    """20 values at 40 sigma cost more clipped than the rounding they save: the
    right 8-bit answer keeps nearly the whole range."""
    lo, hi = run("mse", OUTLIERS, bits=8, symmetric=True)
    assert hi > 30


def test_entropy_clips_outliers_and_keeps_uniform_data_whole():
    lo, hi = run("entropy", OUTLIERS)
    assert 3.0 < hi < 8.0 and lo == -hi                        # far inside the 40-sigma outliers
    u = torch.rand(100_000, generator=g) * 2 - 1
    assert entropy_threshold(u) == pytest.approx(1.0, rel=0.01)


def test_reservoir_is_bounded_and_unbiased():
    e = RangeEstimator("percentile", max_samples=10_000)
    for b in GAUSS.split(20_000):
        e.update(b)
    assert e.sample.numel() == 10_000 and e.seen == 200_000
    assert float(e.sample.mean()) == pytest.approx(0.0, abs=0.05) and float(e.sample.std()) == pytest.approx(1.0, rel=0.05)


def test_errors():
    with pytest.raises(QuantgateError, match="calibrator must be one of minmax, moving_average"):
        RangeEstimator("median")
    with pytest.raises(QuantgateError, match="calibration data is empty"):
        RangeEstimator("minmax").range()
    assert len(CALIBRATORS) == 5
