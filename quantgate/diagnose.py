"""Warnings about silent failures, each with a severity and a remedy."""

from __future__ import annotations

SEVERITIES = ("error", "warning", "info")


def warning(severity: str, code: str, candidate: str | None, message: str, remedy: str) -> dict:
    assert severity in SEVERITIES
    return {"severity": severity, "code": code, "candidate": candidate, "message": message, "remedy": remedy}


def slice_drops(c, primary: str, alpha: float = 0.05) -> list[dict]:
    """Slice values where the candidate is significantly worse on the primary
    metric, after Holm's correction for the number of slice values compared
    (all columns together): the adjusted bootstrap p-value is below alpha and
    the change is negative."""
    from .evaluate.metrics import holm
    rows = [(col, r) for col, rs in c.slices.items() for r in rs if primary in r and "p_value" in r[primary]]
    if not rows:
        return []
    adj = holm([r[primary]["p_value"] for _, r in rows])
    return [{"column": col, "value": r["value"], "n": r["n"], "p_holm": p, **r[primary]}
            for (col, r), p in zip(rows, adj) if p < alpha and r[primary]["delta"] < 0]


def diagnose(comp, max_drop_points: float = 1.0, min_calibration: int = 32, max_ppl_rise: float = 0.1) -> list[dict]:
    from .tasks import description
    out = []
    task = description(comp.task)
    primary = task["primary"]
    spec = next(m for m in task["metrics"] if m["name"] == primary)
    base_bs = comp.baseline["perf"]["batch_sizes"]
    bname = comp.baseline.get("name", "fp32")
    for c in comp.candidates:
        slower = [(bs, st["p50_ms"], base_bs[bs]["p50_ms"]) for bs, st in c.perf["batch_sizes"].items()
                  if bs in base_bs and st["p50_ms"] > base_bs[bs]["p50_ms"]]
        if slower:
            detail = "; ".join(f"batch {bs}: p50 {cm:.1f} ms vs {bm:.1f} ms for {bname}" for bs, cm, bm in slower)
            out.append(warning("error", "slower", c.name, f"quantized but slower: backend fallback? {detail}",
                               f"it runs on {c.kernel}; try another backend or recipe, or keep this model in {bname}"))
        for note in c.notes:        # quantgate's own kernels: moot where another runtime serves the model
            if "always dequantize" in note and comp.environment.get("serving_runtime", "quantgate").startswith("quantgate"):
                out.append(warning("warning", "fallback", c.name, note,
                                   "pick a group size the packed kernel supports (32, 64, 128, 256 dividing the layer width)"))
        ppl = c.metrics.get("perplexity")
        if ppl and ppl["ratio"] > 1 + max_ppl_rise:
            out.append(warning("warning", "perplexity-rise", c.name,
                               f"perplexity rises {100 * (ppl['ratio'] - 1):.1f}% ({ppl['baseline']:.2f} -> "
                               f"{ppl['candidate']:.2f}); {c.n_changed} greedy continuation(s) changed",
                               "use more bits or a smaller group size, GPTQ instead of round-to-nearest, "
                               "or act-order"))
        acc = c.metrics.get(primary) if spec["kind"] == "share" else None
        drop = -100 * acc["delta"] if acc else 0.0
        if drop > max_drop_points:
            out.append(warning("warning", "accuracy-drop" if primary == "accuracy" else "task-metric-drop", c.name,
                               f"{spec['label']} drops {drop:.2f} points (95% CI {-100 * acc['ci_high']:.2f} to "
                               f"{-100 * acc['ci_low']:.2f})",
                               "keep the most sensitive layers in float (recipe exclude), or try a gentler recipe"))
        k = 100 if spec["kind"] == "share" else 1
        m = c.metrics.get(primary)
        if m and (m["ci_high"] < 0 if spec["lower_is_better"] else m["ci_low"] > 0):
            out.append(warning("info", "better-than-baseline", c.name,
                               f"{spec['label']} is significantly better than {bname} ({k * m['delta']:+.2f} "
                               f"[{k * m['ci_low']:+.2f}, {k * m['ci_high']:+.2f}]): for the same model with rounded "
                               "weights this is most likely this evaluation set's noise or a regularising effect, "
                               "not a gain to count on",
                               "check it on more (or other) held-out data before relying on it"))
        drops = sorted(slice_drops(c, primary), key=lambda r: r["delta"])
        if drops:
            def one(r):
                return (f"{r['column']}={r['value']} (n={r['n']}) drops {-k * r['delta']:.2f}{' points' if k == 100 else ''} "
                        f"(95% CI {-k * r['ci_high']:.2f} to {-k * r['ci_low']:.2f}; Holm-adjusted p {r['p_holm']:.3f})")
            more = f"; {len(drops)} slice values in all" if len(drops) > 3 else ""
            out.append(warning("warning", "slice-drop", c.name,
                               f"{spec['label']} on " + "; ".join(one(r) for r in drops[:3]) + more
                               + ", adjusted over every slice value, whatever the overall figure does",
                               "look at this slice's changed examples; calibrate on data that covers it, keep its "
                               "sensitive layers in float, or gate with --max-slice-drop"))
        qat = c.extra.get("qat") if c.extra else None
        if qat and qat["qat_accuracy"] < qat["ptq_accuracy"]:
            out.append(warning("warning", "qat-worse-than-ptq", c.name,
                               f"QAT ({100 * qat['qat_accuracy']:.2f}%) is less accurate than post-training quantization "
                               f"with the same formats ({100 * qat['ptq_accuracy']:.2f}%)",
                               "use the post-training candidate, or retrain with a lower lr / fewer steps"))
        lin_float = list(c.float_layers)
        if lin_float:
            out.append(float_layers_warning(c, comp.baseline))
        cal = c.calibration
        if cal and cal.get("count", min_calibration) < min_calibration:
            out.append(warning("warning", "calibration-small", c.name,
                               f"calibrated on only {cal['count']} samples",
                               f"use at least {min_calibration} (a few hundred recommended), covering every slice"))
    out.extend(half_suffices(comp, spec))
    if comp.calibration_checks:
        out.extend(calibration_warnings(comp.calibration_checks))
    timing = comp.environment.get("timing") if comp.environment else None
    if timing:
        from .evaluate.perf import contention
        why = contention(timing, {"fp32": comp.baseline["perf"]} | {c.name: c.perf for c in comp.candidates})
        if why:
            out.append(warning("warning", "contended-timing", None,
                               "latency may not be trusted: " + "; ".join(why),
                               f"re-run on a quiet machine, or with fewer threads (--threads 1; this run used "
                               f"{timing['threads']})"))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(out, key=lambda w: order[w["severity"]])


def calibration_warnings(checks: dict) -> list[dict]:
    """Warnings from quantgate.activations.check_calibration."""
    from .activations import CLIP_RATE_WARN, MIN_SAMPLES, OUTLIER_RATIO_INFO, OUTLIER_RATIO_WARN
    from .activations import TOKEN_JS_WARN, UNSEEN_WARN
    out = []
    su, co = checks["sufficiency"], checks["coverage"]
    n, unit = checks["n"], checks.get("unit", "samples")
    lm = "tokens_vs_task" in checks
    if lm and checks["tokens"] < checks["widest_input"]:
        out.append(warning("error", "calibration-small", None,
                           f"the calibration text is {checks['tokens']} tokens ({checks['texts']} text(s)), fewer than the "
                           f"{checks['widest_input']} input features of the widest layer: every GPTQ Hessian is "
                           "rank-deficient, so the damping decides the rounding and GPTQ fits these few sentences, "
                           "not the task (expect round-to-nearest quality or worse)",
                           f"calibrate on at least {su['recommended_min_samples']} windows of task-like text "
                           f"({su['recommended_min_samples'] * 512:,} tokens at 512 a window)"))
    elif n < MIN_SAMPLES:
        out.append(warning("warning", "calibration-small", None, f"calibrated on only {n} {unit}",
                           f"use at least {su['recommended_min_samples']} (a few hundred recommended), covering every slice"))
    elif not su["converged"]:
        layer, change = next(iter(su["last_doubling_change"].items()))
        out.append(warning("warning", "calibration-insufficient", None,
                           f"activation ranges have not converged on {n} {unit}: only {su['converged_share']:.0%} of "
                           f"layers moved less than 10% on the last doubling ({layer}: {change:.0%})",
                           f"calibrate on at least {su['recommended_min_samples']} {unit.split(' of ')[0]}"))
    g = checks.get("gptq_convergence")
    if g and not g["converged"] and checks["tokens"] >= checks["widest_input"] and len(g["sizes"]) > 1:
        layer, gain = max(g["last_doubling_gain"].items(), key=lambda kv: kv[1])
        out.append(warning("warning", "calibration-insufficient", None,
                           f"{g['recipe']}'s result has not converged on {n} {unit}: the last doubling still lowered "
                           f"{layer}'s output error on the task's inputs by {gain:.0%}",
                           f"calibrate on at least {g['recommended_windows']} {unit.split(' of ')[0]}"))
    if lm:
        t = checks["tokens_vs_task"]
        if t["js_bits"] > TOKEN_JS_WARN or t["unseen_share"] > UNSEEN_WARN:
            out.append(warning("warning", "calibration-unlike-task", None,
                               f"the calibration text is unlike the evaluation prompts: token distributions "
                               f"{t['js_bits']:.2f} bits apart (Jensen-Shannon; threshold {TOKEN_JS_WARN}), and "
                               f"{t['unseen_share']:.0%} of the prompts' tokens never occur in it",
                               "calibrate on text like the task's prompts (a sample of them is best: "
                               "--calibration FILE)"))
    for col, gone in checks["missing_slices"].items():
        out.append(warning("warning", "calibration-coverage", None,
                           f"calibration data has no examples of {col} = {', '.join(gone)}, which the evaluation data has",
                           "calibrate on a stratified sample that covers every slice"))
    if co["clip_rate"] > CLIP_RATE_WARN:
        layer, rate = next(iter(co["worst_layers"].items()))
        worst_slices = "; ".join(f"{col}: {rows[0]['value']} ({rows[0]['clip_rate']:.1e})" for col, rows in co["slices"].items())
        out.append(warning("warning", "calibration-clipping", None,
                           f"{co['clip_rate']:.1e} of evaluation activations fall outside the calibrated ranges "
                           f"(threshold {CLIP_RATE_WARN:.0e}); worst layer {layer} ({rate:.1e}); clipping most: {worst_slices}",
                           "calibration data is too narrow or too clean: add examples like the evaluation data, "
                           "or use a percentile/MSE calibrator that plans for clipping"))
    for r in checks["outliers"]:
        ratio = r["channel_ratio"] or 0
        if ratio >= OUTLIER_RATIO_INFO:
            out.append(warning("warning" if ratio >= OUTLIER_RATIO_WARN else "info", "outlier-channels", None,
                               f"{r['layer']}: input channel {r['channel']} peaks at {r['peak']:.1f}, {ratio:.0f}x the median "
                               f"channel's peak (kurtosis {r['kurtosis'] or float('nan'):.0f})",
                               "per-channel or per-token activation scales, SmoothQuant-style scaling into the weights, "
                               "or keep this layer in float (recipe exclude)"))
            if len([w for w in out if w["code"] == "outlier-channels"]) >= 3:
                break
    return out


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def float_layers_warning(c, baseline: dict) -> dict:
    """The linear layers left in float, with their size: a head that is a fifth of the
    model is not the 'tiny head' a classifier has, and it caps the size saving."""
    sizes = (c.footprint or {}).get("float_layers", {})
    total = (c.footprint or {}).get("parameters") or 0
    n_float = sum(sizes.values())
    share = n_float / total if total else 0.0
    names = list(c.float_layers)
    listed = ", ".join(f"{n} ({c.float_layers[n]}{'; ' + _count(sizes[n]) + ' parameters' if n in sizes else ''})"
                       for n in names[:4]) + (" ..." if len(names) > 4 else "")
    size = f", {_count(n_float)} parameters ({100 * share:.1f}% of the model)" if sizes else ""
    if share >= 0.05:
        ratio = baseline["weight_bytes"] / c.weight_bytes if c.weight_bytes else 0
        bits = (c.footprint or {}).get("bits_per_param")
        tied = any(why.startswith("output head tied") for why in c.float_layers.values())
        remedy = (f"they cap the saving: the candidate is {ratio:.2f}x smaller than fp32"
                  + (f" at {bits:.1f} bits per parameter" if bits else "") + "; store them in low bits too"
                  + (" (a tied head: add -head8 or -head4 to the recipe name)" if tied else
                     " (narrow the recipe's exclude list)") + ", or accept the size")
    else:
        remedy = "small (under 5% of the parameters), as a classifier's head is; otherwise check the recipe's exclude list"
    return warning("info", "float-layers", c.name, f"{len(names)} linear layer(s) stayed in float{size}: {listed}", remedy)


def half_suffices(comp, spec: dict) -> list[dict]:
    """A quantized candidate no faster than a half-precision one at any batch size buys only memory over it."""
    out = []
    halves = [c for c in comp.candidates if c.recipe.get("method") == "half"]
    k = 100 if spec["kind"] == "share" else 1
    for c in comp.candidates:
        if c.recipe.get("method") == "half":
            continue
        for h in halves:
            sizes = [bs for bs in c.perf["batch_sizes"] if bs in h.perf["batch_sizes"]]
            if not sizes or any(c.perf["batch_sizes"][bs]["p50_ms"] < h.perf["batch_sizes"][bs]["p50_ms"] for bs in sizes):
                continue
            detail = ", ".join(f"batch {bs}: {c.perf['batch_sizes'][bs]['p50_ms']:.1f} ms against "
                               f"{h.perf['batch_sizes'][bs]['p50_ms']:.1f}" for bs in sizes)
            mc, mh = c.metrics.get(spec["name"]), h.metrics.get(spec["name"])
            cost = (f"; {spec['label']} {k * mc['delta']:+.2f} against {k * mh['delta']:+.2f} for {h.name}"
                    if mc and mh else "")
            out.append(warning("info", "half-suffices", c.name,
                               f"quantization buys no speed over {h.name} on this machine ({detail}): only memory "
                               f"({c.weight_bytes / 2**20:.1f} MB of weights against {h.weight_bytes / 2**20:.1f}){cost}",
                               f"serve {h.name} unless the memory matters more than the accuracy"))
            break
    return out
