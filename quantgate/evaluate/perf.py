"""Latency distribution, throughput and memory of one candidate.

Latency is measured per call at each batch size after warm-up (which also
triggers any compilation), repeated until `budget_s` or `max_reps`, and reported
as p50/p95/p99 with the sample count. Resident memory is sampled by a thread
while the candidate runs."""

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


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": len(a)}


def measure(module: torch.nn.Module, model: Model, texts: list[str], batch_sizes=(1, 32), warmup: int = 2,
            min_reps: int = 10, max_reps: int = 200, budget_s: float = 5.0) -> dict:
    """Latency percentiles and throughput (examples/s at the median latency) per batch size."""
    out = {"batch_sizes": {}}
    reps_texts = (texts * (max(batch_sizes) // max(1, len(texts)) + 1))
    with RssSampler() as mem, torch.inference_mode():
        for bs in batch_sizes:
            enc = model.encode(reps_texts[:bs])
            ids, am = enc["input_ids"], enc["attention_mask"]
            for _ in range(warmup):
                module(ids, am)
            samples, t_end = [], time.perf_counter() + budget_s
            while len(samples) < max_reps and (len(samples) < min_reps or time.perf_counter() < t_end):
                t = time.perf_counter()
                module(ids, am)
                samples.append((time.perf_counter() - t) * 1e3)
            stats = percentiles(samples)
            stats["throughput_per_s"] = bs / (stats["p50_ms"] / 1e3)
            out["batch_sizes"][str(bs)] = stats
    out["peak_rss_mb"] = mem.peak / 2**20
    out["rss_growth_mb"] = (mem.peak - mem.start) / 2**20
    return out
