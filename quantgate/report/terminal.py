"""The comparison as a terminal table."""

from __future__ import annotations

from ..tasks import description


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _size(x: dict) -> list[str]:
    """Bits per parameter (of the quantized layers alone, in brackets) and the model's own memory."""
    f, mem = x.get("footprint") or {}, x["perf"].get("memory_mb")
    bits = "-" if f.get("bits_per_param") is None else f"{f['bits_per_param']:.2f}"
    if f.get("quantized_bits_per_weight") is not None:
        bits += f" ({f['quantized_bits_per_weight']:.2f})"
    return [bits, "-" if mem is None else f"{mem:.0f}"]


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


def fmt_value(v: float, spec: dict) -> str:
    """A metric's value as people read it: shares in %, values as they are."""
    return f"{100 * v:.2f}" if spec["kind"] == "share" else f"{v:.2f}"


def fmt_delta(m: dict, spec: dict, interval: bool = True) -> str:
    """The change with its interval: points for shares, the value's own unit otherwise."""
    k = 100 if spec["kind"] == "share" else 1
    return f"{k * m['delta']:+.2f}" + (f" [{k * m['ci_low']:+.2f}, {k * m['ci_high']:+.2f}]" if interval else "")


def worst_slice(c: dict, primary: str) -> dict | None:
    """The slice value whose primary metric changed most for the worse."""
    rows = [(col, r) for col, rs in c.get("slices", {}).items() for r in rs if primary in r]
    if not rows:
        return None
    col, r = min(rows, key=lambda cr: cr[1][primary]["delta"])
    return {"column": col, **r}


def slice_table(d: dict) -> str:
    """Every slice value of every candidate: the primary metric's change with its interval."""
    t = description(d.get("task"))
    spec = next(m for m in t["metrics"] if m["name"] == t["primary"])
    out = []
    cands = d["candidates"]
    for col in d["data"].get("slices", {}):
        if not cands or col not in cands[0]["slices"]:
            continue
        rows = [[r["value"], str(r["n"])] + [fmt_delta(c["slices"][col][i][t["primary"]], spec) for c in cands]
                for i, r in enumerate(cands[0]["slices"][col])]
        out += [""] + _grid([col, "n"] + [f"{c['name']} Δ{spec['label']}" for c in cands], rows)
    return "\n".join(out)


def table(d: dict, slices: bool = False) -> str:
    """`d` is Comparison.to_dict(), of any task; `slices` adds the full per-slice table."""
    t = description(d.get("task"))
    specs = {m["name"]: m for m in t["metrics"]}
    primary = specs[t["primary"]]
    others = [m for m in t["metrics"] if m["name"] != t["primary"]]
    base, data = d["baseline"], d["data"]
    per_example = any(c["mcnemar"] for c in d["candidates"]) or bool(data.get("slices"))   # not raw-text windows
    bss = list(base["perf"]["batch_sizes"])
    unit = "ms/tok" if t.get("latency_unit") == "token" else "ms"
    head = ["candidate", primary["label"] + (" %" if primary["kind"] == "share" else ""),
            f"Δ {primary['label']} [95% CI]"] + [f"Δ {m['label']}" for m in others]
    head += (["worst slice: Δ [95% CI]", "McNemar p"] if per_example else []) + ["changed"]
    head += [f"{unit} p50/p99 @{b}" for b in bss] + [f"x thru @{b}" for b in bss] + ["weights MB", "bits/param",
                                                                                     "own MB"]
    bp = base["perf"]["batch_sizes"]
    rows = [[f"{base.get('name', 'fp32')} (baseline)", fmt_value(base[primary["name"]], primary), ""]
            + ["" for _ in others]
            + (["", ""] if per_example else []) + [""]
            + [f"{bp[b]['p50_ms']:.1f}/{bp[b]['p99_ms']:.1f}" for b in bss] + ["1.00" for _ in bss]
            + [_mb(base["weight_bytes"])] + _size(base)]
    for c in d["candidates"]:
        m, cp = c["metrics"], c["perf"]["batch_sizes"]
        w = worst_slice(c, primary["name"])
        worst = f"{w['column']}={w['value']} (n={w['n']}) {fmt_delta(w[primary['name']], primary)}" if w else "-"
        out_of = data["n"] if per_example else data.get("prompts", data["n"])
        rows.append([c["name"], fmt_value(m[primary["name"]]["candidate"], primary), fmt_delta(m[primary["name"]], primary)]
                    + [fmt_delta(m[o["name"]], o, interval=False) for o in others]
                    + ([worst, f"{c['mcnemar']['p_value']:.2f}" if c["mcnemar"] else "-"] if per_example else [])
                    + [f"{c['n_changed']}/{out_of}"]
                    + [f"{cp[b]['p50_ms']:.1f}/{cp[b]['p99_ms']:.1f}" if b in cp else "not timed" for b in bss]
                    + [f"{cp[b]['throughput_per_s'] / bp[b]['throughput_per_s']:.2f}" if b in cp else "-" for b in bss]
                    + [_mb(c["weight_bytes"])] + _size(c))
    out = [t["about"] + (f"; decode latency per token with a KV cache, runtime: {base['perf']['runtime']}"
                         if base["perf"].get("runtime") else "")]
    out += _grid(head, rows)
    from .html import qat_line
    for c in d["candidates"]:
        if c.get("extra", {}).get("qat"):
            out.append(f"{c['name']}: {qat_line(c['extra']['qat'])}")
    if base.get("note"):
        out.append(base["note"])
    timing = d.get("environment", {}).get("timing")
    if timing:
        out.append(f"timing: {timing['threads_why']}" + (f"; {timing['held']}" if timing.get("held") else ""))
    env = d.get("environment", {})
    if env.get("served_as"):
        out.append(f"every model scored and timed in {env['serving_runtime']}, exported as {env['served_as']}")
    out.append("bits/param: stored bits per parameter of the fp32 model (in brackets: of the quantized layers alone)"
               + (f"; own MB: {base['perf']['memory_from']}" if base["perf"].get("memory_from") else ""))
    if slices:
        out.append(slice_table(d))
    return "\n".join(out + _warnings(d))


def plan_table(plan: dict) -> str:
    """What `quantgate auto` tried, in order, and what it chose."""
    out = ["path taken:"]
    for i, st in enumerate(plan["steps"], 1):
        out.append(f"  {i}. {st['recipe']:28s} {'ok ' if st['accuracy_ok'] else 'MISS'}  {st['result']}"
                   + (f"  [{st['seconds']:.0f} s]" if st.get("seconds") is not None else "")
                   + (f"\n     ({st['why_tried']})" if st["why_tried"] != "next in order" else "")
                   + (f"\n     layer sensitivity ranked in {st['sensitivity_seconds']:.0f} s"
                      if st.get("sensitivity_seconds") is not None else "")
                   + (f"\n     {st['retry']}" if st.get("retry") else ""))
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
