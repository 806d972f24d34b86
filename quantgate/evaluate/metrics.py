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
    out = {}
    ok_b, ok_c = (y == pb).astype(float), (y == pc).astype(float)
    d_acc = ok_c[idx].mean(axis=1) - ok_b[idx].mean(axis=1) if n else np.zeros(n_boot)
    out["accuracy"] = _summary(accuracy(y, pb), accuracy(y, pc), d_acc, alpha)
    # confusion matrices of every resample at once: [n_boot, c, c]
    def cms(p):
        codes = (y * c + p)[idx] + (np.arange(n_boot) * c * c)[:, None]
        return np.bincount(codes.ravel(), minlength=n_boot * c * c).reshape(n_boot, c, c)
    d_f1 = _macro_f1_from_cm(cms(pc)) - _macro_f1_from_cm(cms(pb)) if n else np.zeros(n_boot)
    out["macro_f1"] = _summary(macro_f1(y, pb, c), macro_f1(y, pc, c), d_f1, alpha)
    return out


def _summary(base: float, cand: float, deltas: np.ndarray, alpha: float) -> dict:
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2]) if len(deltas) else (np.nan, np.nan)
    return {"baseline": base, "candidate": cand, "delta": cand - base, "ci_low": float(lo), "ci_high": float(hi)}


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
