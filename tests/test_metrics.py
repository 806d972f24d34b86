import numpy as np
import pytest
from scipy.stats import binomtest

from quantgate.evaluate.metrics import accuracy, macro_f1, mcnemar, paired_bootstrap, slice_deltas


def test_macro_f1_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp1 fn0 -> 0.8; class 2: tp1 fp0 fn1 -> 2/3
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(y, p) == pytest.approx(4 / 6)


def test_paired_bootstrap_interval_covers_the_true_change_and_excludes_zero_when_large():
    rng = np.random.default_rng(1)
    n = 2000
    y = rng.integers(0, 4, n)
    pb = np.where(rng.random(n) < 0.9, y, (y + 1) % 4)          # ~90% right
    pc = np.where(rng.random(n) < 0.05, (y + 2) % 4, pb)        # breaks ~5% more
    r = paired_bootstrap(y, pb, pc, n_boot=1000)["accuracy"]
    assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    assert r["ci_high"] < 0 and -0.07 < r["delta"] < -0.03
    same = paired_bootstrap(y, pb, pb, n_boot=200)
    assert same["accuracy"]["delta"] == 0 and same["accuracy"]["ci_low"] == 0 == same["macro_f1"]["ci_high"]


def test_mcnemar_matches_exact_binomial_test():
    y = np.zeros(40, int)
    pb = np.array([0] * 30 + [1] * 10)
    pc = np.array([0] * 22 + [1] * 8 + [0] * 3 + [1] * 7)   # b=8 lost, c=3 gained
    r = mcnemar(y, pb, pc)
    assert (r["baseline_only_correct"], r["candidate_only_correct"]) == (8, 3)
    assert r["p_value"] == pytest.approx(binomtest(3, 11, 0.5).pvalue)
    assert mcnemar(y, pb, pb)["p_value"] == 1.0


def test_slice_deltas_are_per_value():
    y = np.array([0, 0, 1, 1])
    pb = np.array([0, 0, 1, 1])
    pc = np.array([0, 1, 1, 1])
    out = slice_deltas(y, pb, pc, {"s": ["a", "a", "b", "b"]}, n_boot=100)["s"]
    assert [r["value"] for r in out] == ["a", "b"] and [r["n"] for r in out] == [2, 2]
    assert out[0]["accuracy"]["delta"] == pytest.approx(-0.5) and out[1]["accuracy"]["delta"] == 0
