"""Classification metrics and their uncertainty.

Deltas between a baseline and a candidate are paired: both are scored on the
same bootstrap resample of the examples, so the interval reflects the change,
not the spread of each model's score on its own."""

from __future__ import annotations

import numpy as np
from scipy.stats import binom


def accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float((y == p).mean()) if len(y) else float("nan")


def macro_f1(y: np.ndarray, p: np.ndarray, n_classes: int | None = None) -> float:
    """Macro-averaged F1 over the classes that occur in the labels or predictions."""
    if not len(y):
        return float("nan")
    c = int(max(y.max(), p.max()) + 1) if n_classes is None else n_classes
    cm = np.bincount(y * c + p, minlength=c * c).reshape(c, c)
    return float(_macro_f1_from_cm(cm[None])[0])


def _macro_f1_from_cm(cm: np.ndarray) -> np.ndarray:
    """cm: [R, C, C] confusion matrices (rows: truth) -> macro-F1 per matrix."""
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(float)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    present = (support + predicted) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}


def paired_bootstrap(y, pb, pc, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Each metric for baseline and candidate, and the candidate-minus-baseline
    delta with a (1-alpha) percentile interval from paired resamples."""
    y, pb, pc = map(np.asarray, (y, pb, pc))
    n = len(y)
    c = int(max(y.max(), pb.max(), pc.max()) + 1) if n else 1
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), int)
    out = {"accuracy": paired_mean(y == pb, y == pc, n_boot, seed, alpha)}    # the same resamples as below
    # confusion matrices of every resample at once: [n_boot, c, c]
    def cms(p):
        codes = (y * c + p)[idx] + (np.arange(n_boot) * c * c)[:, None]
        return np.bincount(codes.ravel(), minlength=n_boot * c * c).reshape(n_boot, c, c)
    d_f1 = _macro_f1_from_cm(cms(pc)) - _macro_f1_from_cm(cms(pb)) if n else np.zeros(n_boot)
    out["macro_f1"] = _summary(macro_f1(y, pb, c), macro_f1(y, pc, c), d_f1, alpha)
    return out


def _summary(base: float, cand: float, deltas: np.ndarray, alpha: float) -> dict:
    """The change with its interval, and a two-sided bootstrap p-value for "no change"
    (twice the smaller share of resampled deltas on either side of zero)."""
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2]) if len(deltas) else (np.nan, np.nan)
    if len(deltas) and np.any(deltas != 0):
        p = min(1.0, 2 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    else:
        p = 1.0
    return {"baseline": base, "candidate": cand, "delta": cand - base, "ci_low": float(lo), "ci_high": float(hi),
            "p_value": p}


def paired_mean(base: np.ndarray, cand: np.ndarray, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Mean of per-example scores (correctness, F1) for baseline and candidate,
    and the paired bootstrap interval of the difference."""
    base, cand = np.asarray(base, float), np.asarray(cand, float)
    n = len(base)
    if not n:
        return _summary(float("nan"), float("nan"), np.zeros(0), alpha)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    d = (cand - base)[idx].mean(axis=1)
    return _summary(float(base.mean()), float(cand.mean()), d, alpha)


def perplexity_ratio(base_nll: np.ndarray, cand_nll: np.ndarray, tokens: np.ndarray | None = None,
                     n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Perplexity of each (from per-item NLL sums over `tokens` tokens, or per-item
    means when tokens is None), the change and its paired bootstrap interval over items."""
    base_nll, cand_nll = np.asarray(base_nll, float), np.asarray(cand_nll, float)
    t = np.ones_like(base_nll) if tokens is None else np.asarray(tokens, float)
    n = len(base_nll)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    tt = t[idx].sum(1)
    ratio = np.exp(cand_nll[idx].sum(1) / tt - base_nll[idx].sum(1) / tt)
    b, c = float(np.exp(base_nll.sum() / t.sum())), float(np.exp(cand_nll.sum() / t.sum()))
    lo, hi = np.quantile(ratio, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(ratio <= 1)), float(np.mean(ratio >= 1)))) if np.any(ratio != 1) else 1.0
    return {"baseline": b, "candidate": c, "delta": c - b, "ratio": c / b, "ci_low": float(b * lo - b),
            "ci_high": float(b * hi - b), "p_value": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error control for any dependence between the tests."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adj, run = [1.0] * m, 0.0
    for rank, i in enumerate(order):
        run = max(run, min(1.0, (m - rank) * p_values[i]))
        adj[i] = run
    return adj


def mcnemar(y, pb, pc) -> dict:
    """Exact McNemar test on the examples whose correctness changed.
    b: baseline right, candidate wrong; c: baseline wrong, candidate right."""
    y, pb, pc = map(np.asarray, (y, pb, pc))
    ok_b, ok_c = y == pb, y == pc
    b = int((ok_b & ~ok_c).sum())
    c = int((~ok_b & ok_c).sum())
    p = 1.0 if b + c == 0 else min(1.0, 2 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return {"baseline_only_correct": b, "candidate_only_correct": c, "p_value": p}


def slice_deltas(y, pb, pc, slices: dict[str, list[str]], n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy and macro-F1 deltas with paired intervals, per value of every slice column."""
    y, pb, pc = map(np.asarray, (y, pb, pc))
    out = {}
    for col, values in slices.items():
        values = np.asarray(values)
        rows = []
        for v in sorted(set(values.tolist())):
            m = values == v
            r = paired_bootstrap(y[m], pb[m], pc[m], n_boot=n_boot, seed=seed)
            rows.append({"value": v, "n": int(m.sum()), **{k: r[k] for k in ("accuracy", "macro_f1")}})
        out[col] = rows
    return out
