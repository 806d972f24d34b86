"""Latency distribution, throughput and memory.

Latency is measured per call at each batch size after warm-up (which also
triggers any compilation), the baseline and every candidate interleaved, and
reported as p50/p95/p99 with the sample count. Resident memory is sampled by a
thread while a model runs its evaluation."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
import torch

from ..models import Model


class RssSampler:
    """Peak resident set size of this process while the block runs."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._proc = psutil.Process()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self):
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def summary(self) -> dict:
        return {"peak_rss_mb": self.peak / 2**20, "rss_growth_mb": (self.peak - self.start) / 2**20}


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": len(a)}


def measure(modules: dict[str, torch.nn.Module], model: Model, texts: list[str], batch_sizes=(1, 32),
            warmup: int = 2, min_reps: int = 10, max_reps: int = 200, budget_s: float = 5.0) -> dict[str, dict]:
    """Latency percentiles and throughput (examples/s at the median latency)
    per batch size, for several models measured round-robin: one call each per
    round, so load from elsewhere on a shared machine hits them alike and the
    ratios between them stay fair. `budget_s` is per model and batch size."""
    out = {name: {"batch_sizes": {}} for name in modules}
    reps_texts = texts * (max(batch_sizes) // max(1, len(texts)) + 1)
    with torch.inference_mode():
        for bs in batch_sizes:
            enc = model.encode(reps_texts[:bs])
            ids, am = enc["input_ids"], enc["attention_mask"]
            for m in modules.values():
                for _ in range(warmup):
                    m(ids, am)
            samples = {name: [] for name in modules}
            t_end = time.perf_counter() + budget_s * len(modules)
            rounds = 0
            while rounds < max_reps and (rounds < min_reps or time.perf_counter() < t_end):
                for name, m in modules.items():
                    t = time.perf_counter()
                    m(ids, am)
                    samples[name].append((time.perf_counter() - t) * 1e3)
                rounds += 1
            for name in modules:
                stats = percentiles(samples[name])
                stats["throughput_per_s"] = bs / (stats["p50_ms"] / 1e3)
                out[name]["batch_sizes"][str(bs)] = stats
    return out
