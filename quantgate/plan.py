"""`quantgate auto`: walk the candidate paths in the order a careful engineer
tries them, under a budget, and keep the evidence.

    classifiers: fp32 -> bf16 -> dynamic int8 -> static int8 -> (QAT) -> weight-only int8 -> weight-only int4
    causal LMs:  fp32 -> bf16 -> int8 -> int4-g128 -> gptq-int4-g128 -> gptq-int4-g64 -> nf4 -> gptq-int3-g128

Half precision comes first for both: on hardware with native bf16 it is often
as fast as int8 at no accuracy cost, and quantization must then buy something
over it. It is skipped, with the reason, where the hardware has no fast path.
A candidate is also skipped when one of the same method with more bits already
missed the accuracy budget (fewer bits will not pass), with that reason.

1. Each candidate is quantized and scored on the evaluation data. When it
   misses the accuracy budget by no more than the budget itself (at least
   REACH points or %), its most sensitive layers (quantgate.sensitivity) are
   kept at int8 (a weight format under 8 bits) or in float, `keep` layers at
   a time, and it is scored again. A miss further off is not retried, and the
   step says so: keeping three layers of two hundred recovered about a point
   at most when measured (README).
2. QAT runs only when every post-training int8 path (fallbacks included)
   missed, and only with training data.
3. Latency is then measured, interleaved, for fp32 and every candidate that
   met the accuracy budget (for all of them when none did): a candidate that
   missed it cannot be chosen, and timing it would only cost time.
4. Every candidate is gated against the whole budget (quantgate.gate). Among
   those that pass, the choice is on the Pareto front of measured p50 latency
   (at each budget batch size) and weight memory: the front member with the
   smallest geometric mean of its ratios to fp32. Not first-fit.
5. The chosen candidate is saved in the registry; when nothing passes, the
   best candidates (the Pareto front of drop, latency and memory among the
   timed ones, at most 3) are saved, each with the constraints it missed.
"""

from __future__ import annotations

import dataclasses
import math

from .compare import Comparer, Comparison, Settings
from .data import Dataset
from .errors import require
from .gate import Budget, check
from .models import CausalLM
from .recipes import GPTQ, NF4, QAT, DynamicInt8, Half, Recipe, StaticInt8, WeightOnly
from .sensitivity import layer_sensitivity

DEFAULT_PATH = (Half(dtype="bf16"), DynamicInt8(), StaticInt8(), WeightOnly(bits=8), WeightOnly(bits=4, group_size=32))
LM_PATH = (Half(dtype="bf16"), WeightOnly(bits=8), WeightOnly(bits=4, group_size=128), GPTQ(bits=4, group_size=128),
           GPTQ(bits=4, group_size=64), NF4(), GPTQ(bits=3, group_size=128))
PTQ_INT8 = ("dynamic-int8", "static-int8")
REACH = 1.0      # a miss over its limit by at most max(limit, REACH) points (or %) is retried


def default_path(model) -> tuple[Recipe, ...]:
    return LM_PATH if isinstance(model, CausalLM) else DEFAULT_PATH


def _why_skip(recipe: Recipe, missed: list[Recipe]) -> str | None:
    """Why a careful engineer would not try `recipe` now, or None."""
    if isinstance(recipe, Half):
        from .methods.half import fast_path
        if fast_path(recipe.dtype) is None:
            return f"skipped: this machine has no fast path for {recipe.dtype} (it would be slower than fp32)"
    bits = getattr(recipe, "bits", None)
    for m in missed:
        if bits is not None and m.method == recipe.method and getattr(m, "bits", 0) > bits:
            return f"skipped: {m.name} already missed the accuracy budget, and fewer bits will not pass"
    return None


def _out_of_reach(r: dict) -> str | None:
    """Why keeping a few layers at higher precision will not rescue this accuracy miss, or None."""
    for c in r["constraints"]:
        if "interval" in c and c["verdict"] != "pass" and c["value"] - c["limit"] > max(c["limit"], REACH):
            return (f"not retried: {c['constraint']} is over its budget of {c['limit']:g} {c['unit']} by more than "
                    f"{max(c['limit'], REACH):g}, further than a few layers kept at higher precision recover")
    return None


def _keeping(recipe: Recipe, layers: tuple[str, ...], keep_as: str) -> tuple[Recipe, str]:
    """`recipe` with `layers` kept at int8 (a weight format under 8 bits) or in float."""
    if keep_as == "int8" and recipe.stores_weights and getattr(recipe, "bits", 4) < 8:
        return dataclasses.replace(recipe, int8_layers=tuple(recipe.int8_layers) + layers), "at int8"
    return dataclasses.replace(recipe, exclude=tuple(recipe.exclude) + layers), "in float"


def _accuracy_only(b: Budget) -> Budget:
    return dataclasses.replace(b, max_latency_ms=None, max_memory_mb=None)


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto(points: dict[str, list[float]]) -> list[str]:
    """Names whose objective vectors (lower is better) no other point dominates."""
    return [n for n, p in points.items() if not any(_dominates(q, p) for m, q in points.items() if m != n)]


def _objectives(c: dict, sizes: list[str]) -> list[float] | None:
    """Latency at each size and weight bytes; None for a candidate that was not timed."""
    if not c["perf"].get("batch_sizes"):
        return None
    return [c["perf"]["batch_sizes"][bs]["p50_ms"] for bs in sizes] + [c["weight_bytes"]]


def choose(comp: dict, budget: Budget) -> dict:
    """Gate every candidate of a finished comparison and choose (pure: no measuring)."""
    from .tasks import description
    n = comp["data"]["n"]
    base = comp["baseline"]
    if budget.metric is None:
        budget = dataclasses.replace(budget, metric=description(comp.get("task"))["primary"])
    sizes = [str(b) for b in budget.batch_sizes] or list(base["perf"]["batch_sizes"])
    results = {c["name"]: check(c, base, budget, n, description(comp.get("task"))) for c in comp["candidates"]}
    cands = {c["name"]: c for c in comp["candidates"]}
    ref = _objectives(base, sizes)
    passing = [k for k, r in results.items() if r["passed"]]
    front = pareto({k: _objectives(cands[k], sizes) for k in passing})

    def score(k):  # geometric mean of ratios to fp32 over latencies and weight bytes (None: not timed)
        o = _objectives(cands[k], sizes)
        return None if o is None else math.exp(sum(math.log(v / r) for v, r in zip(o, ref)) / len(ref))
    chosen = min(front, key=score) if front else None
    verdicts = []
    for k, r in results.items():
        if not r["passed"]:
            why = "missed the budget: " + "; ".join(r["missed"])
        elif k == chosen:
            why = f"chosen: passes the budget; on the latency/memory Pareto front with the best score ({score(k):.2f} x fp32)"
        elif k not in front:
            by = next(m for m in passing if _dominates(_objectives(cands[m], sizes), _objectives(cands[k], sizes)))
            why = f"passes, but {by} is at least as fast at every batch size and as small, and better in one"
        else:
            why = f"passes and is on the Pareto front, but scores {score(k):.2f} x fp32 against {score(chosen):.2f} for {chosen}"
        verdicts.append({"name": k, "passed": r["passed"], "uncertain": r["uncertain"], "why": why,
                         "constraints": r["constraints"],
                         "score": score(k), "objectives": dict(zip([f"p50_ms@{s}" for s in sizes] + ["weight_bytes"],
                                                                   _objectives(cands[k], sizes) or []))})
    best = []
    timed = {k: c for k, c in cands.items() if _objectives(c, sizes) is not None}
    if chosen is None and timed:     # nothing passes: the front of (drop, latency, memory)
        pts = {k: [-c["metrics"][budget.metric]["delta"], *_objectives(c, sizes)] for k, c in timed.items()}
        best = sorted(pareto(pts), key=lambda k: (pts[k][0], score(k)))[:3]
    base_ok = check_baseline(base, budget, sizes)
    return {"budget": budget.to_dict(), "batch_sizes": sizes, "chosen": chosen, "passing": passing,
            "front": front, "best": best, "candidates": verdicts, "baseline": base_ok}


def check_baseline(base: dict, budget: Budget, sizes: list[str]) -> dict:
    """Does fp32 itself meet the latency and memory targets? (Its accuracy is the reference.)"""
    missed = []
    if budget.max_latency_ms is not None:
        missed += [f"p95 {base['perf']['batch_sizes'][s]['p95_ms']:.1f} ms at batch {s} over {budget.max_latency_ms:g} ms"
                   for s in sizes if base["perf"]["batch_sizes"][s]["p95_ms"] > budget.max_latency_ms]
    if budget.max_memory_mb is not None and base["weight_bytes"] / 2**20 > budget.max_memory_mb:
        missed.append(f"{base['weight_bytes'] / 2**20:.1f} MB of weights over {budget.max_memory_mb:g} MB")
    return {"meets_targets": not missed, "missed": missed}


def auto(model, data, calibration: Dataset | None, budget: Budget, train: Dataset | None = None,
         settings: Settings | None = None, path: tuple[Recipe, ...] | None = None, keep: tuple[int, ...] = (3,),
         keep_as: str = "int8", registry=None, base_name: str | None = None) -> tuple[Comparison, dict]:
    """Walk `path` (default: the model kind's) under `budget`; returns the comparison (with .plan) and the plan.
    For a causal LM `data` is a PromptSet (its task) or a list of texts (perplexity). A miss within
    reach is retried keeping its `keep` most sensitive layers `keep_as` int8 (weight formats under
    8 bits; others keep them in float) or float."""
    require(keep_as in ("int8", "float"), f"keep_as must be int8 or float, got {keep_as!r}")
    import sys
    import time
    path = default_path(model) if path is None else path
    s = settings or Settings(batch_sizes=budget.batch_sizes or None)
    if s.batch_sizes is None and budget.batch_sizes:
        s.batch_sizes = budget.batch_sizes
    t0 = time.perf_counter()
    c = Comparer(model, data, calibration, s, train, list(path))
    if budget.metric is None:
        budget = dataclasses.replace(budget, metric=c.task.primary)
    acc_budget = _accuracy_only(budget)
    steps = []
    missed: list[Recipe] = []
    accurate: list[str] = []        # candidates that met the accuracy budget: the ones timed
    if s.verbose:
        print(f"auto: fp32 baseline scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def attempt(recipe: Recipe, why: str) -> dict:
        t = time.perf_counter()
        cand = c.add(recipe)
        r = check(dataclasses.asdict(cand), c.comp.baseline, acc_budget, len(data), c.comp.task)
        if r["passed"]:
            accurate.append(recipe.name)
        m = cand.metrics[budget.metric]
        seconds = round(time.perf_counter() - t, 1)
        steps.append({"recipe": recipe.name, "why_tried": why, "accuracy_ok": r["passed"], "seconds": seconds,
                      "result": "; ".join(r["missed"]) or
                      (f"{100 * m['delta']:+.2f} points {budget.metric}" if "delta" in m and budget.metric != "perplexity"
                       else f"{budget.metric} x{m.get('ratio', 1):.3f}")})
        if s.verbose:
            print(f"auto: {recipe.name}: {steps[-1]['result']} ({seconds:.0f} s)", file=sys.stderr)
        return r

    calibrated = [r for r in path if r.needs_calibration]
    if calibrated and calibration is not None:
        c.check_calibration(max(r.num_samples for r in calibrated), max(getattr(r, "seq_len", 0) for r in calibrated),
                            next((r for r in calibrated if r.method == "gptq"), None))
    int8_ok = False                 # a post-training int8 path (or QAT) met the accuracy budget
    qat_tried = any(isinstance(r, QAT) for r in path)   # a path that names QAT tries it in its place

    def maybe_qat() -> None:
        nonlocal int8_ok, qat_tried
        if not int8_ok and not qat_tried and train is not None and not isinstance(model, CausalLM):
            qat_tried = True
            int8_ok = attempt(QAT(), "post-training int8 paths missed and training data is given")["passed"]

    for recipe in path:
        skip = _why_skip(recipe, missed) or ("skipped: needs calibration data" if recipe.needs_calibration and (
            calibration is None or len(calibration) == 0) else None)
        if skip:
            steps.append({"recipe": recipe.name, "why_tried": "next in order", "accuracy_ok": False, "skipped": True,
                          "result": skip})
            continue
        if isinstance(recipe, WeightOnly):
            maybe_qat()             # QAT comes after the int8 paths, before low-bit weight-only
        r = attempt(recipe, "next in order")
        ok = r["passed"]
        far = None if ok else _out_of_reach(r)
        if far and keep:
            steps[-1]["retry"] = far
        if not ok and not far and keep and recipe.method not in ("qat", "half"):
            t = time.perf_counter()
            ranked = layer_sensitivity(model, recipe, calibration if calibration is not None else data,
                                       verbose=s.verbose)
            steps[-1]["sensitivity_seconds"] = round(time.perf_counter() - t, 1)
            for k in keep:
                layers = tuple(x["layer"] for x in ranked[:k])
                kept, how = _keeping(recipe, layers, keep_as)
                ok = attempt(kept, f"{recipe.name} missed: keep its {k} most sensitive layer(s) {how} "
                                   f"({', '.join('.'.join(x.split('.')[-4:]) for x in layers)})")["passed"]
                if ok:
                    break
        if not ok:
            missed.append(recipe)
        if recipe.method in PTQ_INT8 + ("qat",):
            int8_ok = int8_ok or ok
    maybe_qat()
    t = time.perf_counter()
    comp = c.finish(timed=accurate or None)
    if s.verbose:
        print(f"auto: speed and memory of every model measured in {time.perf_counter() - t:.0f} s; "
              f"{time.perf_counter() - t0:.0f} s in all", file=sys.stderr)
    plan = choose(comp.to_dict(), budget)
    plan["steps"] = steps
    if registry is not None:
        saved = []
        for name in ([plan["chosen"]] if plan["chosen"] else plan["best"]):
            cand = comp.candidate(name)
            verdict = next(v for v in plan["candidates"] if v["name"] == name)
            evidence = {"comparison": {"data": comp.data, "baseline": _summary(comp.baseline),
                                       "candidate": _summary(dataclasses.asdict(cand))},
                        "gate": {"passed": verdict["passed"], "why": verdict["why"], "budget": budget.to_dict()}}
            row = registry.register(c.quantized_candidate(name), model, base=base_name, evidence=evidence)
            saved.append({"name": name, "version": row["version"], "content_hash": row["content_hash"],
                          "existing": row["existing"], "path": row["path"]})
        plan["saved"] = saved
    comp.plan = plan
    return comp, plan


def _summary(c: dict) -> dict:
    keep = ("name", "accuracy", "macro_f1", "weight_bytes", "metrics", "mcnemar", "agreement", "n_changed")
    out = {k: c[k] for k in keep if k in c}
    out["perf"] = {bs: {k: v for k, v in st.items() if k.startswith("p")} for bs, st in c["perf"].get("batch_sizes", {}).items()}
    return out
