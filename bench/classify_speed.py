"""Throughput of every CPU path for the default classifier, side by side in one run.

    .venv/bin/python bench/classify_speed.py [--batch-size 32] [--seq-len 128] [--rounds 7]

Candidates are timed round-robin (one call each per round, several rounds), so
machine noise hits them alike; the table gives the median per-call latency,
throughput and the ratio to fp32 eager. Compilation happens before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantgate.data import bbc_splits  # noqa: E402
from quantgate.finetune import finetune  # noqa: E402
from quantgate.models import load_classifier  # noqa: E402
from quantgate.quantize import quantize  # noqa: E402
from quantgate.recipes import DynamicInt8, StaticInt8, WeightOnly  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated subset of candidate names")
    a = ap.parse_args()

    splits = bbc_splits()
    model = load_classifier(finetune(splits["train"]), max_length=a.seq_len)
    texts = (splits["test"].texts * 4)[: a.batch_size]
    enc = model.encode(texts)
    ids, am = enc["input_ids"], enc["attention_mask"]

    cands: dict[str, torch.nn.Module] = {}
    build = {
        "fp32 eager": lambda: model.module,
        "fp32 compiled": lambda: _compiled_fp32(model.module, ids, am),
        "dynamic int8 (torch.ao fbgemm)": lambda: quantize(model, DynamicInt8(backend="torch.ao")).module,
        "dynamic int8 (PT2E inductor)": lambda: quantize(model, DynamicInt8(backend="pt2e")).module,
        "static int8 (PT2E inductor)": lambda: quantize(model, StaticInt8(), splits["calibration"]).module,
        "weight-only int8": lambda: quantize(model, WeightOnly(bits=8)).module,
        "weight-only int4 g32": lambda: quantize(model, WeightOnly(bits=4, group_size=32)).module,
    }
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    for name, fn in build.items():
        if only and not any(o in name for o in only) and name != "fp32 eager":
            continue
        t0 = time.perf_counter()
        m = fn()
        with torch.inference_mode():
            m(ids, am); m(ids, am)  # compile / warm up
        print(f"prepared {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        cands[name] = m

    times = {n: [] for n in cands}
    with torch.inference_mode():
        for _ in range(a.rounds):
            for n, m in cands.items():
                t = time.perf_counter()
                m(ids, am)
                times[n].append(time.perf_counter() - t)

    base = statistics.median(times["fp32 eager"])
    print(f"\nbatch {a.batch_size}, sequence length {a.seq_len}, {torch.get_num_threads()} threads, "
          f"{a.rounds} rounds, torch {torch.__version__}")
    print(f"{'path':34s} {'median ms':>10s} {'examples/s':>11s} {'x fp32 eager':>13s}")
    for n, ts in times.items():
        med = statistics.median(ts)
        print(f"{n:34s} {med * 1e3:10.1f} {a.batch_size / med:11.1f} {base / med:13.2f}")


def _compiled_fp32(module, ids, am):
    import torch._inductor.config as icfg
    icfg.freezing = True
    fn = torch.compile(module, dynamic=False)
    return lambda i, m: fn(i, m)


if __name__ == "__main__":
    main()
