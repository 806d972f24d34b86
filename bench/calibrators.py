"""Static int8 with each calibrator (asymmetric activations, and symmetric for two), and QAT's recovery at int4 weights / int8
activations, on the default classifier and the BBC test split, in one run.

    .venv/bin/python bench/calibrators.py [--batch-size 32] [--qat-epochs 1]

Accuracy deltas carry paired 95% intervals; latency is measured with every
model interleaved (one call each per round), so the speed ratios are fair.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantgate.calibrators import CALIBRATORS  # noqa: E402
from quantgate.compare import Settings, compare  # noqa: E402
from quantgate.data import bbc_splits  # noqa: E402
from quantgate.finetune import finetune  # noqa: E402
from quantgate.models import load_classifier  # noqa: E402
from quantgate.recipes import QAT, StaticInt8  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--qat-lr", type=float, default=5e-5)
    ap.add_argument("--only-qat", action="store_true", help="skip the calibrators, measure QAT's recovery only")
    a = ap.parse_args()
    s = bbc_splits()
    model = load_classifier(finetune(s["train"]))
    recipes = [] if a.only_qat else [StaticInt8(calibrator=c) for c in CALIBRATORS] + \
        [StaticInt8(symmetric_activations=True), StaticInt8(calibrator="mse", symmetric_activations=True)]
    recipes.append(QAT(weight_bits=4, epochs=a.qat_epochs, lr=a.qat_lr))
    comp = compare(model, s["test"], recipes, s["calibration"],
                   Settings(batch_sizes=(a.batch_size,), perf_budget_s=3.0), train=s["train"])
    bs = str(a.batch_size)
    base = comp.baseline
    base_ms = base["perf"]["batch_sizes"][bs]["p50_ms"]
    print(f"\nfp32 baseline accuracy {100 * base['accuracy']:.2f}%, p50 {base_ms:.0f} ms at batch {bs}")
    print(f"{'candidate':28s} {'acc %':>7s} {'Δacc pts [95% CI]':>22s} {'changed':>8s} {'x fp32 speed':>13s}")
    for c in comp.candidates:
        acc = c.metrics["accuracy"]
        ms = c.perf["batch_sizes"][bs]["p50_ms"]
        print(f"{c.name:28s} {100 * acc['candidate']:7.2f} {100 * acc['delta']:+7.2f} "
              f"[{100 * acc['ci_low']:+.2f}, {100 * acc['ci_high']:+.2f}] {c.n_changed:8d} {base_ms / ms:13.2f}")
        if "qat" in c.extra:
            r = c.extra["qat"]
            share = "n/a" if r["recovered_share"] is None else f"{100 * r['recovered_share']:.0f}%"
            print(f"    PTQ with the same formats: {100 * r['ptq_accuracy']:.2f}%; QAT recovered {share} of PTQ's loss"
                  + (f" ({r['note']})" if r["note"] else ""))


if __name__ == "__main__":
    main()
