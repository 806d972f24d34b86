"""Budgets and the deployment gate: a saved comparison in, pass or fail out,
with reasons, and honest about uncertainty.

A metric drop is judged on its paired 95% interval, not only its point:

- pass:      the whole interval is within the budget;
- fail:      the whole interval is beyond it;
- uncertain: the interval crosses the budget. The point estimate says which way
  it leans, and `n_needed` estimates how many evaluation examples would shrink
  the interval (width ~ 1/sqrt(n)) until it no longer crosses, assuming the
  effect and its per-example variance stay as measured.

An uncertain constraint decides by its point estimate, flagged as such, unless
the budget is `strict`, where uncertain fails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .errors import QuantgateError, require

VERDICTS = ("pass", "uncertain", "fail")


@dataclass(frozen=True)
class Budget:
    max_drop: float = 1.0                  # points of the overall metric
    max_slice_drop: float | None = None    # points, for every slice value
    metric: str | None = None              # default: the task's primary metric (accuracy, exact_match, perplexity, ...);
                                           # a lower-is-better value (perplexity): max_drop is its largest rise in %
    max_latency_ms: float | None = None    # p95 per call, at each of batch_sizes
    batch_sizes: tuple[int, ...] = ()      # where the latency target applies (default: every measured size)
    max_memory_mb: float | None = None     # weight memory
    strict: bool = False                   # uncertain fails

    def __post_init__(self):
        object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
        require(self.metric is None or (isinstance(self.metric, str) and self.metric.replace("_", "").isalnum()),
                f"metric must be a metric name such as accuracy, exact_match or perplexity, got {self.metric!r}")
        for name in ("max_drop", "max_slice_drop", "max_latency_ms", "max_memory_mb"):
            v = getattr(self, name)
            require(v is None or (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)),
                    f"{name} must be a number >= 0, got {v!r}")
        require(all(isinstance(b, int) and b > 0 for b in self.batch_sizes),
                f"batch sizes must be positive integers, got {self.batch_sizes}")

    def to_dict(self) -> dict:
        return asdict(self)


def drop_verdict(what: str, metric: dict, limit: float, n: int, noun: str = "drop", unit: str = "points",
                 items: str = "evaluation examples") -> dict:
    """Judge a metric change {delta, ci_low, ci_high} (fractions) against a drop limit in points."""
    drop = -100 * metric["delta"]
    lo, hi = -100 * metric["ci_high"], -100 * metric["ci_low"]     # interval of the drop
    row = {"constraint": what, "value": round(drop, 3), "interval": [round(lo, 3), round(hi, 3)], "limit": limit,
           "unit": unit, "n": n, "n_needed": None}
    if hi <= limit:
        row["verdict"], row["detail"] = "pass", f"{noun} {drop:.2f} {unit}, at most {hi:.2f} at 95%, within {limit:g}"
    elif lo > limit:
        row["verdict"], row["detail"] = "fail", f"{noun} {drop:.2f} {unit}, at least {lo:.2f} at 95%, over {limit:g}"
    else:
        row["verdict"] = "uncertain"
        row["leans"] = "pass" if drop <= limit else "fail"
        half, margin = (hi - lo) / 2, abs(drop - limit)
        if margin > 0 and half > 0:
            row["n_needed"] = int(math.ceil(n * (half / margin) ** 2))
        settle = (f"about {row['n_needed']} {items} (now {n}) would settle it" if row["n_needed"]
                  else "the estimate sits on the budget: more examples alone will not settle it")
        row["detail"] = (f"{noun} {drop:.2f} {unit}, 95% interval {lo:.2f} to {hi:.2f} crosses {limit:g}; "
                         f"leans {row['leans']}; {settle}")
    return row


def _as_drop(m: dict, spec: dict) -> tuple[dict, str, str]:
    """A metric change as a drop to budget: shares in points; a lower-is-better
    value as its relative rise in % (so the budget reads the same on any scale)."""
    if spec["kind"] == "share":
        sign = -1 if spec["lower_is_better"] else 1
        return {"delta": sign * m["delta"], "ci_low": sign * (m["ci_low"] if sign > 0 else m["ci_high"]),
                "ci_high": sign * (m["ci_high"] if sign > 0 else m["ci_low"])}, "drop", "points"
    b = m["baseline"]
    if spec["lower_is_better"]:
        return {"delta": -m["delta"] / b, "ci_low": -m["ci_high"] / b, "ci_high": -m["ci_low"] / b}, "rise", "%"
    return {"delta": m["delta"] / b, "ci_low": m["ci_low"] / b, "ci_high": m["ci_high"] / b}, "drop", "%"


def check(cand: dict, baseline: dict, budget: Budget, n: int, task: dict | None = None) -> dict:
    """Every constraint of the budget for one candidate of a comparison (as dicts)."""
    from .tasks import description
    t = description(task)
    name = budget.metric or t["primary"]
    spec = next(m for m in t["metrics"] if m["name"] == name)
    items = t.get("items", "examples")
    rel, noun, unit = _as_drop(cand["metrics"][name], spec)
    rows = [drop_verdict(f"overall {name}" if noun == "drop" else f"{name} {noun}", rel, budget.max_drop, n,
                         noun=noun, unit=unit, items=f"evaluation {items}")]
    if budget.max_slice_drop is not None:
        for col, values in cand["slices"].items():
            for r in values:
                if name in r:
                    d, noun_s, unit_s = _as_drop(r[name], spec)
                    rows.append(drop_verdict(f"{name} on {col}={r['value']}", d, budget.max_slice_drop, r["n"],
                                             noun=noun_s, unit=unit_s, items=f"evaluation {items}"))
    measured = cand.get("perf", {}).get("batch_sizes", {})
    if budget.max_latency_ms is not None and cand.get("perf", {}).get("not_timed"):
        rows.append({"constraint": "p95 latency", "value": None, "limit": budget.max_latency_ms, "unit": "ms",
                     "verdict": "not measured", "detail": cand["perf"]["not_timed"]})
    elif budget.max_latency_ms is not None:
        sizes = [str(b) for b in budget.batch_sizes] or list(measured)
        for bs in sizes:
            require(bs in measured, f"the comparison has no latency at batch size {bs} "
                                    f"(measured: {', '.join(measured) or 'none'}); re-run with --batch-sizes {bs}")
            p95 = measured[bs]["p95_ms"]
            ok = p95 <= budget.max_latency_ms
            rows.append({"constraint": f"p95 latency at batch {bs}", "value": round(p95, 3), "limit": budget.max_latency_ms,
                         "unit": "ms", "verdict": "pass" if ok else "fail",
                         "detail": f"p95 {p95:.1f} ms {'within' if ok else 'over'} {budget.max_latency_ms:g} ms"})
    if budget.max_memory_mb is not None:
        mb = cand["weight_bytes"] / 2**20
        ok = mb <= budget.max_memory_mb
        rows.append({"constraint": "weight memory", "value": round(mb, 3), "limit": budget.max_memory_mb, "unit": "MB",
                     "verdict": "pass" if ok else "fail",
                     "detail": f"{mb:.1f} MB of weights {'within' if ok else 'over'} {budget.max_memory_mb:g} MB"})
    failed = [r for r in rows if r["verdict"] == "fail"]
    uncertain = [r for r in rows if r["verdict"] == "uncertain"]
    leaning_fail = [r for r in uncertain if budget.strict or r["leans"] == "fail"]
    passed = not failed and not leaning_fail
    return {"name": cand["name"], "passed": passed, "verdict": "fail" if failed else
            ("uncertain" if uncertain else "pass"),
            "missed": [r["detail"] for r in failed + leaning_fail],
            "uncertain": [r["detail"] for r in uncertain], "constraints": rows}


@dataclass
class GateResult:
    budget: dict
    results: list[dict] = field(default_factory=list)

    def result(self, name: str) -> dict:
        for r in self.results:
            if r["name"] == name:
                return r
        raise KeyError(name)


def gate(comparison: dict, budget: Budget, names: list[str] | None = None) -> GateResult:
    """Check the named candidates (default: all) of a comparison dict against a budget."""
    cands = {c["name"]: c for c in comparison["candidates"]}
    names = names or list(cands)
    unknown = [n for n in names if n not in cands]
    if unknown:
        raise QuantgateError(f"no candidate {unknown[0]!r} in this comparison; it has: {', '.join(cands) or 'none'}")
    from .tasks import description
    t = description(comparison.get("task"))
    known = [m["name"] for m in t["metrics"]]
    require(budget.metric is None or budget.metric in known,
            f"this comparison ({t['kind']}) has no metric {budget.metric!r}; it has: {', '.join(known)}")
    n = comparison["data"]["n"]
    return GateResult(budget.to_dict(), [check(cands[x], comparison["baseline"], budget, n, t) for x in names])


def format_result(r: dict) -> str:
    mark = {"pass": "PASS", "fail": "FAIL", "uncertain": "PASS (uncertain)" if r["passed"] else "FAIL (uncertain)"}
    lines = [f"{r['name']}: {mark[r['verdict']]}"]
    for c in r["constraints"]:
        if c["verdict"] != "pass" or " on " not in c["constraint"]:
            lines.append(f"  [{c['verdict']:>9s}] {c['constraint']}: {c['detail']}")
    return "\n".join(lines)
