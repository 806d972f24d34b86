"""Latency distribution, throughput and memory.

Latency is measured per call at each batch size after warm-up (which also
triggers any compilation), the baseline and every candidate interleaved, and
reported as p50/p95/p99 with the sample count. Peak resident memory while a
model runs its evaluation comes from the kernel's peak counter (reset on
entry), or a sampling thread where there is none; each model's own memory
(`own_memory`) is its weights plus the working memory of one representative
call, measured for that model alone, since the process holds them all."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import psutil
import torch

from ..models import Model


def proc_status_bytes(field: str) -> int | None:
    """A memory field of this process's /proc/self/status in bytes ("VmHWM": the peak resident
    set size; "RssFile": its file-backed part), or None where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _read_hwm() -> int | None:
    return proc_status_bytes("VmHWM")


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: `5` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """Peak resident set size of this process while the block runs. Where the
    kernel keeps the peak (Linux), its counter is reset on entry and read on
    exit: exact, and no thread competes with the measured work. Elsewhere a
    thread samples every 20 ms."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self._proc = psutil.Process()
        self._t = None

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval_s)

    _depth = 0          # an inner sampler must not reset the counter an outer one reads

    def __enter__(self):
        if RssSampler._depth == 0:     # garbage collected inside the block would lower the peak it measures
            import gc
            gc.collect()
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._file = proc_status_bytes("RssFile")
        self.kernel = RssSampler._depth == 0 and _reset_hwm() and _read_hwm() is not None
        RssSampler._depth += 1
        if not self.kernel:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc):
        RssSampler._depth -= 1
        self._stop.set()
        if self._t is not None:
            self._t.join()
        hwm = _read_hwm() if self.kernel else None
        self.peak = max(self.peak, self._proc.memory_info().rss, hwm or 0)
        file = proc_status_bytes("RssFile")
        # file-backed pages the block touched first: a memory-mapped model's weights paging in, not working memory
        self.file_growth = max(0, file - self._file) if file is not None and self._file is not None else 0

    def summary(self) -> dict:
        return {"peak_rss_mb": self.peak / 2**20, "rss_growth_mb": (self.peak - self.start) / 2**20,
                "peak_from": "kernel peak counter (VmHWM, reset on entry)" if self.kernel else
                             f"sampled every {self.interval_s * 1e3:.0f} ms"}


def trim_heap() -> bool:
    """Hand the heap's free memory back to the kernel (glibc's malloc_trim), so that a
    later peak measures what is allocated then, not what an earlier model left free."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def own_memory(modules: dict[str, torch.nn.Module], weight_bytes: dict[str, int], call, what: str) -> dict[str, dict]:
    """Each model's own memory, apart from the others the process holds: its weights plus
    the peak its working memory reaches in one representative `call(module)`, measured
    for each model alone (warm, after the heap's free memory went back to the kernel)."""
    out = {}
    for name, m in modules.items():
        if hasattr(m, "process_memory"):         # run by another runtime in its own process: measured there
            call(m)
            r = m.process_memory()
            out[name] = {"memory_mb": r["memory_mb"], "working_mb": r["memory_mb"] - r["file_mb"],
                         "memory_from": f"the peak RSS of its {m.runtime_name} process less what that process "
                                        "held before loading the model (working: less the model file)"}
            continue
        call(m)                                  # warm: lazily built kernels and tables are not working memory
        trimmed = trim_heap()
        with RssSampler() as s:
            call(m)
        work = (s.peak - s.start) / 2**20
        out[name] = {"memory_mb": weight_bytes[name] / 2**20 + work, "working_mb": work,
                     "memory_from": f"weights + the peak working memory of {what}, measured for this model alone"
                                    + (" after returning free heap to the kernel" if trimmed else "")}
    return out


def _cpu_times() -> tuple[float, float, float] | None:
    """(busy, steal, total) seconds of all CPUs since boot, from /proc/stat; None where it is not there."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0.0
    total = sum(v[:8])
    return (total - idle - steal) / hz, steal / hz, total / hz


WORKERS: set[int] = set()   # process ids of serving-runtime workers (export/llamacpp.py): their CPU time is ours


class Conditions:
    """What else the machine did while latency was measured: the CPU time other
    processes took (busy CPU time less this process's own), CPU steal where the
    kernel reports it, the load average, and the threads torch used."""

    def __enter__(self):
        self._proc = psutil.Process()
        self._t0, self._own0, self._cpu0 = time.perf_counter(), self._own(), _cpu_times()
        return self

    def _own(self) -> float:
        """CPU seconds of this process and of the serving runtimes' workers it runs (`WORKERS`)."""
        total = 0.0
        for p in [self._proc] + [psutil.Process(pid) for pid in WORKERS if psutil.pid_exists(pid)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._t0
        self.own = self._own() - self._own0
        cpu1 = _cpu_times()
        self.other = self.steal = None
        if self._cpu0 and cpu1:
            self.other = max(0.0, (cpu1[0] - self._cpu0[0]) - self.own)
            self.steal = max(0.0, cpu1[1] - self._cpu0[1])

    def summary(self) -> dict:
        w = max(self.wall, 1e-9)
        return {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "seconds": round(self.wall, 2),
                "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "other_processes_cores": None if self.other is None else round(self.other / w, 3),
                "steal_cores": None if self.steal is None else round(self.steal / w, 3)}


def idle_cores(seconds: float = 0.3) -> float | None:
    """How many cores sat idle over a short look (None where /proc/stat is missing)."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    if not a or not b or b[2] <= a[2]:
        return None
    busy = (b[0] - a[0] + b[1] - a[1]) / (b[2] - a[2])
    return (os.cpu_count() or 1) * (1 - busy)


def fair_threads(requested: int | None = None) -> tuple[int, str]:
    """Threads for timing: the user's number, or as many as there are idle cores
    (torch's OpenMP threads spin-wait; one on a core another process holds makes
    every call wait for it). Returns the number and why."""
    if requested:
        return requested, f"{requested} thread(s), as asked (--threads)"
    n = torch.get_num_threads()
    idle = idle_cores()
    if idle is None:
        return n, f"{n} thread(s), torch's default"
    use = max(1, min(n, int(idle + 0.5)))
    return use, f"{use} thread(s): {idle:.1f} of {os.cpu_count()} cores were idle before timing"


def contention(cond: dict, results: dict[str, dict]) -> list[str]:
    """Reasons the latency figures may not be trusted: other processes busy, steal, or a wide spread."""
    why = []
    other, steal = cond.get("other_processes_cores"), cond.get("steal_cores")
    if other is not None and other > 0.25:
        why.append(f"other processes used {other:.2f} cores on average while timing")
    if steal is not None and steal > 0.05:
        why.append(f"the hypervisor stole {steal:.2f} cores on average")
    spread = [(name, bs, st["p99_ms"] / st["p50_ms"]) for name, r in results.items()
              for bs, st in r.get("batch_sizes", {}).items() if st.get("p50_ms")]
    wide = [x for x in spread if x[2] > 3]
    if wide:
        name, bs, ratio = max(wide, key=lambda x: x[2])
        why.append(f"p99 is {ratio:.1f}x p50 for {name} at batch {bs}")
    return why


def percentiles(samples_ms: list[float], batch: int | None = None, ttft_ms: list[float] | None = None) -> dict:
    """p50/p95/p99 and mean of the calls (or decode steps) measured, kept raw as samples_ms; with the
    batch size, throughput at the median (tokens/s for decode steps, given times to first token)."""
    a = np.asarray(samples_ms)
    out = {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
           "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": len(a),
           "samples_ms": list(map(float, samples_ms))}
    if batch is not None:
        out["throughput_per_s"] = batch / (out["p50_ms"] / 1e3)
    if ttft_ms is not None:
        out |= {"tokens_per_s": out["throughput_per_s"], "ttft_ms": float(np.median(ttft_ms)),
                "ttft_samples_ms": list(map(float, ttft_ms))}
    return out


def drop_samples(result: dict) -> dict:
    """A speed result ({"batch_sizes": {bs: stats}}) without its raw calls, as it is reported."""
    for st in result.get("batch_sizes", {}).values():
        st.pop("samples_ms", None), st.pop("ttft_samples_ms", None)
    return result


def merge_rounds(parts: list[dict]) -> dict:
    """One model's speed results from several rounds of timing -> one, the percentiles
    over every round's calls (the raw samples each round kept)."""
    out = {k: v for k, v in parts[0].items() if k != "batch_sizes"} | {"batch_sizes": {}}
    for bs, first in parts[0]["batch_sizes"].items():
        rounds = [p["batch_sizes"][bs] for p in parts]
        ttft = sum((r["ttft_samples_ms"] for r in rounds), []) if "ttft_samples_ms" in first else None
        merged = percentiles(sum((r["samples_ms"] for r in rounds), []), int(bs), ttft)
        out["batch_sizes"][bs] = {k: v for k, v in first.items() if k not in merged} | merged
    return out


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
                out[name]["batch_sizes"][str(bs)] = percentiles(samples[name], bs)
    return out
