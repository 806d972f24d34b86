"""Warnings about silent failures, each with a severity and a remedy."""

from __future__ import annotations

SEVERITIES = ("error", "warning", "info")


def warning(severity: str, code: str, candidate: str | None, message: str, remedy: str) -> dict:
    assert severity in SEVERITIES
    return {"severity": severity, "code": code, "candidate": candidate, "message": message, "remedy": remedy}


def diagnose(comp, max_drop_points: float = 1.0, min_calibration: int = 32) -> list[dict]:
    out = []
    base_bs = comp.baseline["perf"]["batch_sizes"]
    for c in comp.candidates:
        slower = [(bs, st["p50_ms"], base_bs[bs]["p50_ms"]) for bs, st in c.perf["batch_sizes"].items()
                  if bs in base_bs and st["p50_ms"] > base_bs[bs]["p50_ms"]]
        if slower:
            detail = "; ".join(f"batch {bs}: p50 {cm:.1f} ms vs {bm:.1f} ms for fp32" for bs, cm, bm in slower)
            out.append(warning("error", "slower", c.name, f"quantized but slower: backend fallback? {detail}",
                               f"it runs on {c.kernel}; try another backend or recipe, or keep this model in fp32"))
        for note in c.notes:
            if "always dequantize" in note:
                out.append(warning("warning", "fallback", c.name, note,
                                   "pick a group size the packed kernel supports (32, 64, 128, 256 dividing the layer width)"))
        acc = c.metrics["accuracy"]
        drop = -100 * acc["delta"]
        if drop > max_drop_points:
            out.append(warning("warning", "accuracy-drop", c.name,
                               f"accuracy drops {drop:.2f} points (95% CI {-100 * acc['ci_high']:.2f} to "
                               f"{-100 * acc['ci_low']:.2f})",
                               "keep the most sensitive layers in float (recipe exclude), or try a gentler recipe"))
        lin_float = list(c.float_layers)
        if lin_float:
            out.append(warning("info", "float-layers", c.name,
                               f"{len(lin_float)} linear layer(s) stayed in float: " + ", ".join(
                                   f"{n} ({c.float_layers[n]})" for n in lin_float[:4]) +
                               (" ..." if len(lin_float) > 4 else ""),
                               "expected for tiny heads; otherwise check the recipe's exclude list"))
        cal = c.calibration
        if cal and cal["count"] < min_calibration:
            out.append(warning("warning", "calibration-small", c.name,
                               f"calibrated on only {cal['count']} samples",
                               f"use at least {min_calibration} (a few hundred recommended), covering every slice"))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(out, key=lambda w: order[w["severity"]])
