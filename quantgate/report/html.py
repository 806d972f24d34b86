"""A self-contained HTML report: tables, inline SVG plots, and a few lines of
script to filter the changed examples. Nothing is loaded from the network."""

from __future__ import annotations

import json
from html import escape

from . import svg

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.warn{padding:8px 12px;border-radius:4px;margin:6px 0}.error{background:#fde2e1;border-left:5px solid #c62828}
.warning{background:#fff4d6;border-left:5px solid #e0a000}.info{background:#e8f1fb;border-left:5px solid #1f77b4}
.ok{background:#e6f4ea;border-left:5px solid #2e7d32;padding:8px 12px}
.neg{color:#c62828}.pos{color:#2e7d32}.muted{color:#777}code{background:#f4f4f4;padding:1px 4px}
details{margin:6px 0}td.text{text-align:left;max-width:520px;font-size:12px}
#summary,#costs{font-size:12px;max-width:100%}#summary td,#costs td,#summary th,#costs th{white-space:normal}
svg{max-width:100%;height:auto}
"""

SCRIPT = """
(function () {
  const sel = document.getElementById('changed-filter');
  const rows = Array.from(document.querySelectorAll('#changed tbody tr'));
  function apply() {
    let shown = 0;
    for (const r of rows) {
      const on = sel.value === '' || r.dataset.candidate === sel.value;
      r.style.display = on ? '' : 'none';
      if (on) shown++;
    }
    document.getElementById('changed-count').textContent = shown + ' shown';
  }
  if (sel) { sel.addEventListener('change', apply); apply(); }
  document.body.dataset.ready = 'yes';
})();
"""


def _head(d: dict, what: str) -> list[str]:
    h = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>quantgate report</title>"
         f"<style>{CSS}</style></head><body data-candidates=\"{len(d['candidates'])}\">",
         f"<h1>quantgate report</h1><p class=muted>model <code>{escape(d['model']['path'])}</code> "
         f"(sha {escape(d['model']['sha'])}) on <code>{escape(d['data']['source'])}</code>, "
         f"{escape(what)}; {escape(d['created'])}</p>"]
    if d.get("plan"):
        h.append(plan_section(d["plan"], d))
    # Failures and warnings first.
    h.append("<h2>Warnings</h2>")
    if not d["warnings"]:
        h.append('<div class="ok">No warnings.</div>')
    for w in d["warnings"]:
        who = f"<b>{escape(w['candidate'])}</b>: " if w["candidate"] else ""
        h.append(f'<div class="warn {w["severity"]}"><b>{w["severity"].upper()}</b> {who}{escape(w["message"])}'
                 f'<br><span class=muted>remedy: {escape(w["remedy"])}</span></div>')
    return h


def _changed_table_head(title: str, cands: list[dict], columns: tuple[str, ...]) -> str:
    """A heading, the candidate filter (SCRIPT drives it) and the changed-examples table's header."""
    return (f"<h2>{escape(title)}</h2><p>Show <select id=changed-filter><option value=''>all candidates</option>"
            + "".join(f"<option>{escape(c['name'])}</option>" for c in cands)
            + "</select> <span id=changed-count class=muted></span></p><table id=changed><thead><tr><th>candidate</th>"
            + "".join(f"<th>{escape(col)}</th>" for col in columns) + "</tr></thead><tbody>")


def _tail(d: dict) -> list[str]:
    """What stayed in float, which kernels ran, and provenance."""
    cands = d["candidates"]
    h = ["<h2>Kernels, and what stayed in float</h2>"]
    for c in cands:
        items = list(c["float_layers"].items()) + list(c["float_ops"].items())
        h.append(f"<p><b>{escape(c['name'])}</b> runs on: {escape(c['kernel'])}</p>")
        calls = c.get("extra", {}).get("kernel_calls")
        if calls:
            h.append("<p class=kernel-calls>calls during this evaluation: "
                     + ", ".join(f"{escape(k)} x{n:,}" for k, n in sorted(calls.items(), key=lambda kv: -kv[1])) + "</p>")
        if c.get("extra", {}).get("qat"):
            h.append(f"<p class=qat>{escape(qat_line(c['extra']['qat']))}</p>")
        h.append(f"<details><summary>{escape(c['name'])}: {len(c['quantized_layers'])} linear layers quantized, "
                 f"{len(c['float_layers'])} linear layers in float</summary><table><tr><th>layer or operator</th><th>why</th></tr>"
                 + "".join(f"<tr><td>{escape(k)}</td><td style='text-align:left'>{escape(v)}</td></tr>" for k, v in items)
                 + "</table>" + "".join(f"<p class=muted>{escape(n)}</p>" for n in c["notes"]) + "</details>")
    h.append("<h2>Recipes and environment</h2><pre>" + escape(json.dumps(
        {"recipes": {c["name"]: c["recipe"] for c in cands},
         "calibration": {c["name"]: c["calibration"] for c in cands if c["calibration"]},
         "environment": d["environment"], "settings": d["settings"]}, indent=2)) + "</pre>")
    h.append(f"<script>{SCRIPT}</script></body></html>")
    return h


def _delta(m: dict, spec: dict) -> str:
    """A metric change with its interval: points for shares; a lower-is-better value is red when it rises."""
    k = 100 if spec["kind"] == "share" else 1
    worse = m["delta"] > 0 if spec["lower_is_better"] else m["delta"] < 0
    cls = "" if m["delta"] == 0 else ("neg" if worse else "pos")
    return (f'<td class="{cls}">{k * m["delta"]:+.2f} '
            f'<span class="muted">[{k * m["ci_low"]:+.2f}, {k * m["ci_high"]:+.2f}]</span></td>')


def _cell(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    return escape(str(v))


def render(d: dict) -> str:
    """Any task's comparison: the task's metrics with paired intervals, per slice, speed, size and the changed
    examples (or answers, or generations), in the columns the task names."""
    from ..tasks import description
    from .terminal import fmt_value
    t = description(d.get("task"))
    specs = t["metrics"]
    primary = next(m for m in specs if m["name"] == t["primary"])
    base, cands, data = d["baseline"], d["candidates"], d["data"]
    bname = escape(base.get("name", "fp32"))           # fp32, or the model as stored (`lm compare --baseline stored`)
    timing = d.get("environment", {}).get("timing", {})
    per_example = any(c["mcnemar"] for c in cands) or bool(data.get("slices"))   # not raw-text windows
    per_token = t.get("latency_unit") == "token"
    tokens = t.get("token_evidence", False)
    bss = list(base["perf"]["batch_sizes"])
    what = t["about"]
    if data.get("dropped"):
        what += f"; {data['dropped']} row(s) of the file skipped for an empty text or label"
    h = _head(d, what)

    thru = "tokens/s" if per_token else "throughput/s"
    lat = "decode ms/token" if per_token else "ms"
    # Two tables, each narrow enough for the page: what the candidate gets right, then what it costs.
    h.append("<h2>Summary</h2><table id=summary><thead><tr><th>candidate</th>"
             f"<th>{escape(primary['label'])}{' %' if primary['kind'] == 'share' else ''}</th>"
             + "".join(f"<th>Δ {escape(m['label'])}{', points' if m['kind'] == 'share' else ''} [95% CI]</th>" for m in specs)
             + ("<th>McNemar p</th>" if per_example else "") + "<th>changed</th>"
             + (f"<th>KL vs {bname}</th><th>same top token %</th>" if tokens else "") + "</tr></thead><tbody>")
    blanks = len(specs) + (1 if per_example else 0) + 1 + (2 if tokens else 0)
    h.append(f"<tr><td>{bname} (baseline)</td><td>{fmt_value(base[primary['name']], primary)}</td>" + "<td></td>" * blanks
             + "</tr>")
    for c in cands:
        same = c.get("same_top") if c.get("same_top") is not None else c["agreement"]
        h.append(f"<tr class=candidate><td>{escape(c['name'])}</td>"
                 f"<td>{fmt_value(c['metrics'][primary['name']]['candidate'], primary)}</td>"
                 + "".join(_delta(c["metrics"][m["name"]], m) for m in specs)
                 + ((f"<td>{c['mcnemar']['p_value']:.3f}</td>" if c["mcnemar"] else "<td></td>") if per_example else "")
                 + f"<td>{c['n_changed']}</td>"
                 + (f"<td>{c['mean_kl']:.4f}</td><td>{100 * same:.1f}</td>" if tokens else "") + "</tr>")
    h.append("</tbody></table>")
    if tokens and base.get("kl_rest_mass") is not None:
        from ..evaluate.next_token import TOP_K
        h.append(f"<p class=muted id=kl-note>KL over {bname}'s {TOP_K:,} most likely tokens at each position and one "
                 "bucket for the rest of the vocabulary: a lower bound on the full KL, as close as the rest is small "
                 f"({bname} put {100 * base['kl_rest_mass']:.2f}% of its probability there).</p>")

    def cost_cells(x: dict, quantize_s) -> str:
        p, f = x["perf"], x.get("footprint") or {}
        bits = f.get("bits_per_param")
        qbits = f.get("quantized_bits_per_weight")
        mem = p.get("memory_mb")
        return ("".join(f"<td>{p['batch_sizes'][b]['p50_ms']:.1f} / {p['batch_sizes'][b]['p95_ms']:.1f} / "
                        f"{p['batch_sizes'][b]['p99_ms']:.1f}</td><td>{p['batch_sizes'][b]['throughput_per_s']:.1f}</td>"
                        if b in p["batch_sizes"] else "<td class=muted>not timed</td><td></td>" for b in bss)
                + f"<td>{x['weight_bytes'] / 2**20:.1f}</td>"
                + "<td>" + ("" if bits is None else f"{bits:.2f}") + ("" if qbits is None else f" ({qbits:.2f})")
                + "</td><td>" + ("" if not f else f"{100 * f['float_share']:.1f}")
                + "</td><td>" + ("" if mem is None else f"{mem:.0f}") + f"</td><td>{quantize_s}</td>")

    h.append("<table id=costs><thead><tr><th>candidate</th>"
             + "".join(f"<th>{lat} p50 / p95 / p99 @{b}</th><th>{thru} @{b}</th>" for b in bss)
             + "<th>weights MB</th><th>bits / parameter (quantized layers)</th><th>% of parameters in float</th>"
               "<th>own memory MB</th><th>quantize s</th></tr></thead><tbody>"
             + f"<tr><td>{bname} (baseline)</td>{cost_cells(base, '')}</tr>"
             + "".join(f"<tr class=candidate><td>{escape(c['name'])}</td>"
                       f"{cost_cells(c, format(c['quantize_seconds'], '.1f'))}</tr>" for c in cands)
             + "</tbody></table>")
    h.append("<p class=muted>Intervals: paired bootstrap over "
             f"{escape(t.get('items', 'examples'))}. "
             + (f"Decode: per token with a KV cache ({escape(base['perf'].get('runtime', 'transformers generate'))}); "
                "tokens/s = batch / median latency. " if per_token else
                "Latency: per call, p50 / p95 / p99 over the calls measured (count in the JSON); throughput: examples "
                "per second at the median latency. ")
             + escape(timing.get("threads_why", "")) + escape(f"; {timing['held']}" if timing.get("held") else "")
             + (escape(f". Every model scored and timed in {d['environment']['serving_runtime']}, exported as "
                       f"{d['environment']['served_as']}") if d.get("environment", {}).get("served_as") else "")
             + escape(f". Own memory: {base['perf']['memory_from']}" + (" (the process itself holds every model of the "
                      "comparison at once)" if "one at a time" not in timing.get("held", "") else "")
                      if base["perf"].get("memory_from") else "")
             + ". Bits per parameter: stored bytes x 8 / the fp32 model's parameters."
             + (escape(f" Note: {base['note']}.") if base.get("note") else "") + "</p>")

    if cands:
        cols = [col for col in data.get("slices", {}) if col in cands[0]["slices"]]
        if cols:
            h.append(f"<h2>{escape(primary['label'].capitalize())} change per slice</h2>")
        for col in cols:
            labels = [r["value"] for r in cands[0]["slices"][col]]
            k = 100 if primary["kind"] == "share" else 1
            series = []
            for c in cands:
                by = {r["value"]: r[primary["name"]] for r in c["slices"][col]}
                series.append((c["name"], [(k * by[v]["delta"], k * by[v]["ci_low"], k * by[v]["ci_high"])
                                           if v in by else None for v in labels]))
            rows = [f"{v} (n={r['n']})" for v, r in zip(labels, cands[0]["slices"][col])]
            h.append(svg.interval_chart(rows, series, f"Δ {primary['label']}, points (dot: estimate; line: paired 95% "
                                        "bootstrap interval)", f"by {col}"))
            slice_specs = [m for m in specs if m["name"] in cands[0]["slices"][col][0]]
            h.append(f"<details><summary>table: by {escape(col)}</summary><table class=slice-table><tr>"
                     f"<th>{escape(col)}</th><th>n</th>"
                     + "".join(f"<th>{escape(c['name'])} Δ{escape(m['label'])}</th>" for c in cands for m in slice_specs)
                     + "</tr>")
            for i, v in enumerate(labels):
                h.append(f"<tr><td>{escape(v)}</td><td>{cands[0]['slices'][col][i]['n']}</td>")
                for c in cands:
                    h.append("".join(_delta(c["slices"][col][i][m["name"]], m) for m in slice_specs))
                h.append("</tr>")
            h.append("</table></details>")

        h.append("<h2>" + ("Decode latency" if per_token else "Latency") + "</h2>")
        for b in bss:
            models = [(bname, base["perf"]["batch_sizes"][b])] + [(c["name"], c["perf"]["batch_sizes"][b])
                                                                   for c in cands if b in c["perf"]["batch_sizes"]]
            h.append(svg.latency_chart(models, b, f"batch {b}", unit="token" if per_token else "call"))
        h.append(f"<h2>Size against {escape(primary['label'])}</h2>")
        k = 100 if primary["kind"] == "share" else 1
        pts = [(bname, base["weight_bytes"] / 2**20, k * base[primary["name"]])] + \
              [(c["name"], c["weight_bytes"] / 2**20, k * c["metrics"][primary["name"]]["candidate"]) for c in cands]
        h.append(svg.scatter(pts, "weight bytes, MB", primary["label"] + (", %" if k == 100 else "")
                             + (" (lower is better)" if primary["lower_is_better"] else ""),
                             f"weights against {primary['label']}"))
        for c in cands:
            tr = c.get("extra", {}).get("training")
            if tr:
                steps = list(range(1, len(tr["losses"]) + 1))
                h.append(f"<h2>Training loss: {escape(c['name'])}</h2>")
                h.append(svg.line_chart([(c["name"], steps, tr["losses"])], "step", "loss", f"{c['name']}: loss per step"))

    if d.get("calibration_checks"):
        h.append(calibration_section(d["calibration_checks"]))

    columns = t.get("changed_columns") or []
    h.append(_changed_table_head(t.get("changed_title", "Changed examples"), cands, tuple(label for _, label in columns)))
    for c in cands:
        for e in c["changed"]:
            cells = []
            for key, _ in columns:
                v = e.get(key, "")
                if key == "first_diff":
                    v = f"#{v}: {e['baseline_token']!r} → {e['candidate_token']!r}"
                text = key in ("text", "prompt", "baseline", "candidate") and isinstance(v, str) and len(v) > 40
                cells.append(f"<td class=text>{escape(v[:240])}</td>" if text else f"<td>{_cell(v)}</td>")
            h.append(f"<tr data-candidate=\"{escape(c['name'])}\"><td>{escape(c['name'])}</td>{''.join(cells)}</tr>")
    h.append("</tbody></table>")
    h += _tail(d)
    return "".join(h)


def calibration_section(cc: dict) -> str:
    su, co = cc["sufficiency"], cc["coverage"]
    worst = list(su["last_doubling_change"])[:5]
    series = [(name.removeprefix("model."), su["sizes"], su["curve"][name]) for name in worst]
    unit = escape(cc.get("unit", "samples"))
    h = [f"<h2>Calibration checks</h2><p>{cc['n']} calibration {unit}; ranges "
         f"{'converged' if su['converged'] else '<b>not converged</b>'} ({su['converged_share']:.0%} of layers moved "
         f"less than 10% on the last doubling); recommended at least {su['recommended_min_samples']} "
         f"{unit.split(' of ')[0]}.</p>",
         svg.line_chart(series, "calibration samples (prefix of the calibration data)",
                        "range width / final width", "activation range against calibration samples (least converged layers)"),
         gptq_convergence(cc["gptq_convergence"], unit) if cc.get("gptq_convergence") else "",
         f"<p>Evaluation activations outside the calibrated ranges: <b>{co['clip_rate']:.2e}</b> of all values.</p>",
         (f"<p>Calibration tokens against the task prompts' tokens: {cc['tokens_vs_task']['js_bits']:.2f} bits apart "
          f"(Jensen-Shannon); {cc['tokens_vs_task']['unseen_share']:.0%} of the prompts' tokens never occur in the "
          f"{cc['tokens']:,} calibration tokens.</p>" if cc.get("tokens_vs_task") else ""),
         "<table><tr><th>layer</th><th>share clipped</th></tr>"
         + "".join(f"<tr><td>{escape(k)}</td><td>{v:.2e}</td></tr>" for k, v in list(co["worst_layers"].items())[:5])
         + "</table>"]
    for col, rows in co["slices"].items():
        h.append(f"<table><tr><th>{escape(col)}</th><th>share clipped</th></tr>"
                 + "".join(f"<tr><td>{escape(r['value'])}</td><td>{r['clip_rate']:.2e}</td></tr>" for r in rows) + "</table>")
    h.append("<table><tr><th>layer (outlier input channels)</th><th>channel</th><th>peak</th><th>x median channel peak</th>"
             "<th>max / median |x|</th><th>kurtosis</th></tr>")
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"
    for r in cc["outliers"][:8]:
        h.append(f"<tr><td>{escape(r['layer'])}</td><td>{r['channel']}</td><td>{r['peak']:.1f}</td>"
                 f"<td>{fmt(r['channel_ratio'])}</td><td>{fmt(r['max_over_median'])}</td><td>{fmt(r['kurtosis'])}</td></tr>")
    h.append("</table>")
    return "".join(h)


def gptq_convergence(g: dict, unit: str) -> str:
    """GPTQ's result against the number of calibration windows, measured on the task's own inputs."""
    series = [(name.removeprefix("model."), g["sizes"], [100 * e for e in errs]) for name, errs in g["errors"].items()]
    gain = max(g["last_doubling_gain"].values())
    return (f"<p id=gptq-convergence>{escape(g['recipe'])} on growing prefixes of the calibration {unit}, each "
            f"rounding's output error measured on the inputs of {g['held_out_tokens']:,} task-prompt tokens GPTQ never "
            f"sees: {'converged' if g['converged'] else '<b>not converged</b>'} (the last doubling lowered the error "
            f"by {100 * gain:.1f}% at most; converged is under 5%); recommended at least "
            f"{g['recommended_windows']} {unit.split(' of ')[0]}.</p>"
            + svg.line_chart(series, "calibration windows (prefix)", "output error on task inputs, %",
                             "GPTQ's result against calibration windows (three layers)"))


def qat_line(r: dict) -> str:
    share = "n/a" if r["recovered_share"] is None else f"{100 * r['recovered_share']:.0f}%"
    if r["recovered_share"] is not None and r["recovered_share"] < 0:
        share = f"none ({share})"
    return (f"QAT recovered {share} of the post-training loss: fp32 {100 * r['baseline_accuracy']:.2f}%, "
            f"PTQ with the same formats {100 * r['ptq_accuracy']:.2f}%, QAT {100 * r['qat_accuracy']:.2f}%"
            + (f" ({r['note']})" if r.get("note") else ""))


def plan_section(plan: dict, d: dict) -> str:
    """quantgate auto: the path taken, every candidate's verdict, and the Pareto chart."""
    chosen = plan["chosen"]
    h = ["<h2>Choice under the budget</h2>"]
    b = plan["budget"]
    limits = [f"overall {b['metric']} drop &le; {b['max_drop']:g} points"]
    if b["max_slice_drop"] is not None:
        limits.append(f"every slice &le; {b['max_slice_drop']:g} points")
    if b["max_latency_ms"] is not None:
        limits.append(f"p95 &le; {b['max_latency_ms']:g} ms at batch {', '.join(plan['batch_sizes'])}")
    if b["max_memory_mb"] is not None:
        limits.append(f"weights &le; {b['max_memory_mb']:g} MB")
    h.append(f"<p>Budget: {'; '.join(limits)}{' (strict: uncertain fails)' if b['strict'] else ''}.</p>")
    if chosen:
        h.append(f'<div class="ok" id=plan-verdict>Chosen: <b>{escape(chosen)}</b></div>')
    else:
        h.append('<div class="warn error" id=plan-verdict><b>No candidate meets the budget.</b> Best candidates: '
                 + escape(", ".join(plan["best"])) + "</div>")
    h.append("<h3>Path taken</h3><ol id=plan-steps>")
    for st in plan["steps"]:
        h.append(f"<li><b>{escape(st['recipe'])}</b>: {'meets' if st['accuracy_ok'] else 'misses'} the accuracy budget "
                 f"({escape(st['result'])})" + (f", {st['seconds']:.0f} s" if st.get("seconds") is not None else "")
                 + (f" <span class=muted>{escape(st['why_tried'])}</span>" if st["why_tried"] != "next in order" else "")
                 + (f" <span class=muted>{escape(st['retry'])}</span>" if st.get("retry") else "") + "</li>")
    h.append("</ol><h3>Every candidate</h3><table id=plan-candidates><tr><th>candidate</th><th>verdict</th>"
             "<th style='text-align:left'>why</th></tr>")
    for v in plan["candidates"]:
        verdict = "chosen" if v["name"] == chosen else ("passes" if v["passed"] else "fails")
        unsure = (f"<br><span class=muted>uncertain: {escape(v['uncertain'][0])}</span>"
                  if v["passed"] and v["uncertain"] else "")
        h.append(f"<tr data-verdict={verdict}><td>{escape(v['name'])}</td><td>{verdict}</td>"
                 f"<td style='text-align:left'>{escape(v['why'])}{unsure}</td></tr>")
    h.append("</table>")
    if plan.get("saved"):
        h.append("<p>Saved: " + ", ".join(f"<code>{escape(s['version'])}</code> ({escape(s['name'])})"
                                          for s in plan["saved"]) + "</p>")
    bs = plan["batch_sizes"][-1]
    cands = {c["name"]: c for c in d["candidates"]}
    pts, colors = [("fp32", d["baseline"]["weight_bytes"] / 2**20, d["baseline"]["perf"]["batch_sizes"][bs]["p50_ms"])], ["#555"]
    for v in plan["candidates"]:
        c = cands[v["name"]]
        if bs not in c["perf"]["batch_sizes"]:      # missed the accuracy budget: not timed
            continue
        pts.append((v["name"], c["weight_bytes"] / 2**20, c["perf"]["batch_sizes"][bs]["p50_ms"]))
        colors.append("#2a7" if v["name"] == chosen else ("#4a90d9" if v["passed"] else "#d9534f"))
    h.append(svg.scatter(pts, "weight memory, MB", f"p50 latency at batch {bs}, ms",
                         "latency against memory", colors=colors, line=plan["front"]))
    h.append("<p class=muted>green: chosen; blue: passes the budget; red: misses it; grey: fp32; "
             "dashed: the Pareto front of the passing candidates. Candidates that missed the accuracy budget "
             "(while another met it) were not timed and are not plotted.</p>")
    return "".join(h)
