"""The comparison as a terminal table."""

from __future__ import annotations


def _pts(x: float) -> str:
    return f"{100 * x:+.2f}"


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _warnings(d: dict) -> list[str]:
    out = []
    if d["warnings"]:
        out.append("")
        for w in d["warnings"]:
            who = f"[{w['candidate']}] " if w["candidate"] else ""
            out.append(f"{w['severity'].upper():7s} {who}{w['message']}\n        remedy: {w['remedy']}")
    return out


def lm_table(d: dict) -> str:
    base, data = d["baseline"], d["data"]
    bss = list(base["perf"]["batch_sizes"])
    head = ["candidate", "ppl", "Δppl [95% CI]", "KL", "same top %", "gen changed"]
    head += [f"ms/tok p50/p99 @{b}" for b in bss] + [f"tok/s @{b}" for b in bss] + ["weights MB", "quantize s"]
    bp = base["perf"]["batch_sizes"]
    rows = [["fp32 (baseline)", f"{base['perplexity']:.2f}", "", "", "", ""]
            + [f"{bp[b]['p50_ms']:.1f}/{bp[b]['p99_ms']:.1f}" for b in bss]
            + [f"{bp[b]['tokens_per_s']:.1f}" for b in bss] + [_mb(base["weight_bytes"]), ""]]
    for c in d["candidates"]:
        p, cp = c["metrics"]["perplexity"], c["perf"]["batch_sizes"]
        rows.append([c["name"], f"{p['candidate']:.2f}", f"{p['delta']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]",
                     f"{c['mean_kl']:.3f}", f"{100 * c['agreement']:.1f}", f"{c['n_changed']}/{data['prompts']}"]
                    + [f"{cp[b]['p50_ms']:.1f}/{cp[b]['p99_ms']:.1f}" for b in bss]
                    + [f"{cp[b]['tokens_per_s']:.1f} ({cp[b]['tokens_per_s'] / bp[b]['tokens_per_s']:.2f}x)" for b in bss]
                    + [_mb(c["weight_bytes"]), f"{c['quantize_seconds']:.1f}"])
    out = [f"perplexity on {data['n']} windows of {data['context']} tokens; decode with a KV cache, "
           f"runtime: {base['perf'].get('runtime', 'transformers generate')}"] + _grid(head, rows)
    return "\n".join(out + _warnings(d))


def table(d: dict) -> str:
    """`d` is Comparison.to_dict()."""
    if d["model"].get("task") == "causal-lm":
        return lm_table(d)
    bss = list(d["baseline"]["perf"]["batch_sizes"])
    base = d["baseline"]
    head = ["candidate", "acc %", "Δacc pts [95% CI]", "Δmacro-F1 pts", "changed", "McNemar p"]
    head += [f"p50/p99 ms @{b}" for b in bss] + [f"x thru @{b}" for b in bss] + ["weights MB"]
    rows = [["fp32 (baseline)", f"{100 * base['accuracy']:.2f}", "", "", "", ""]
            + [f"{base['perf']['batch_sizes'][b]['p50_ms']:.1f}/{base['perf']['batch_sizes'][b]['p99_ms']:.1f}" for b in bss]
            + ["1.00" for _ in bss] + [_mb(base["weight_bytes"])]]
    for c in d["candidates"]:
        a, f = c["metrics"]["accuracy"], c["metrics"]["macro_f1"]
        rows.append([c["name"], f"{100 * a['candidate']:.2f}", f"{_pts(a['delta'])} [{_pts(a['ci_low'])}, {_pts(a['ci_high'])}]",
                     _pts(f["delta"]), f"{c['n_changed']}/{d['data']['n']}", f"{c['mcnemar']['p_value']:.2f}"]
                    + [f"{c['perf']['batch_sizes'][b]['p50_ms']:.1f}/{c['perf']['batch_sizes'][b]['p99_ms']:.1f}" for b in bss]
                    + [f"{c['perf']['batch_sizes'][b]['throughput_per_s'] / base['perf']['batch_sizes'][b]['throughput_per_s']:.2f}"
                       for b in bss]
                    + [_mb(c["weight_bytes"])])
    out = _grid(head, rows)
    from .html import qat_line
    for c in d["candidates"]:
        if c.get("extra", {}).get("qat"):
            out.append(f"{c['name']}: {qat_line(c['extra']['qat'])}")
    return "\n".join(out + _warnings(d))


def plan_table(plan: dict) -> str:
    """What `quantgate auto` tried, in order, and what it chose."""
    out = ["path taken:"]
    for i, st in enumerate(plan["steps"], 1):
        out.append(f"  {i}. {st['recipe']:28s} {'ok ' if st['accuracy_ok'] else 'MISS'}  {st['result']}"
                   + (f"\n     ({st['why_tried']})" if st["why_tried"] != "next in order" else ""))
    out.append("")
    for v in plan["candidates"]:
        mark = "CHOSEN" if v["name"] == plan["chosen"] else ("pass" if v["passed"] else "FAIL")
        out.append(f"  {mark:6s} {v['name']:28s} {v['why']}")
        if v["passed"] and v["uncertain"]:
            out.append(f"         {'':28s} uncertain: {v['uncertain'][0]}")
    if not plan["baseline"]["meets_targets"]:
        out.append("  fp32 itself misses: " + "; ".join(plan["baseline"]["missed"]))
    out.append("")
    if plan["chosen"]:
        out.append(f"chosen: {plan['chosen']}")
    else:
        out.append("no candidate meets the budget; best candidates: " + ", ".join(plan["best"]))
    for sv in plan.get("saved", []):
        out.append(f"saved {sv['name']} as {sv['version']} ({'already registered' if sv['existing'] else 'new'}, "
                   f"content {sv['content_hash']})")
    return "\n".join(out)
