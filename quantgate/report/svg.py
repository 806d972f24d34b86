"""Small inline-SVG charts: no JavaScript library, no network, nothing to load."""

from __future__ import annotations

from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _scale(lo, hi, a, b):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _nice_ticks(lo, hi, n=5):
    import math
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    t = math.ceil(lo / step) * step
    out = []
    while t <= hi + 1e-12:
        out.append(round(t, 10))
        t += step
    return out


def _axes(xticks: list[tuple[float, str]], yticks: list[tuple[float, str]], left: float, right: float,
          top: float, bottom: float) -> list[str]:
    """Grid lines with tick labels: x ticks (position, label) below, y ticks to the left."""
    out = [f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" stroke="#eee"/>'
           f'<text x="{x:.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{label}</text>' for x, label in xticks]
    out += [f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 3:.1f}" font-size="10" text-anchor="end">{label}</text>' for y, label in yticks]
    return out


def legend(names: list[str], x: float, y: float) -> str:
    parts = []
    for i, n in enumerate(names):
        parts.append(f'<rect x="{x}" y="{y + i * 16 - 9}" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text x="{x + 14}" y="{y + i * 16}" font-size="11">{escape(n)}</text>')
    return "".join(parts)


def interval_chart(rows: list[str], series: list[tuple[str, list[tuple[float, float, float] | None]]],
                   xlabel: str, title: str) -> str:
    """Dot-and-whisker chart: one row per label, one dot (value, low, high) per series; a line at 0."""
    row_h, left, right, top = 18 * max(1, len(series)) + 6, 190, 170, 30
    width, height = 820, top + row_h * len(rows) + 40
    vals = [v for _, pts in series for p in pts if p for v in p] + [0.0]
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.05 or 1.0
    sx = _scale(lo - pad, hi + pad, left, width - right)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for t in _nice_ticks(lo - pad, hi + pad):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - 35}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{height - 22}" font-size="10" text-anchor="middle">{t:g}</text>')
    out.append(f'<line x1="{sx(0):.1f}" x2="{sx(0):.1f}" y1="{top}" y2="{height - 35}" stroke="#444" stroke-dasharray="3,3"/>')
    for r, label in enumerate(rows):
        y0 = top + r * row_h
        if r % 2:
            out.append(f'<rect x="0" y="{y0}" width="{width - right + 10}" height="{row_h}" fill="#fafafa"/>')
        out.append(f'<text x="{left - 8}" y="{y0 + row_h / 2 + 4}" font-size="11" text-anchor="end">{escape(label)}</text>')
        for s, (name, pts) in enumerate(series):
            p = pts[r]
            if p is None:
                continue
            v, l, h = p
            y = y0 + 10 + s * 18
            c = PALETTE[s % len(PALETTE)]
            out.append(f'<line x1="{sx(l):.1f}" x2="{sx(h):.1f}" y1="{y}" y2="{y}" stroke="{c}" stroke-width="2">'
                       f'<title>{escape(name)} {escape(label)}: {v:+.2f} [{l:+.2f}, {h:+.2f}]</title></line>'
                       f'<circle cx="{sx(v):.1f}" cy="{y}" r="4" fill="{c}"/>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 5}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(legend([n for n, _ in series], width - right + 20, top + 10))
    out.append("</svg>")
    return "".join(out)


def latency_chart(models: list[tuple[str, dict]], batch_size: str, title: str, unit: str = "call") -> str:
    """One row per model: a bar from p50 to p99 with ticks at p50, p95 and p99 (log-free, ms)."""
    left, right, top, row_h = 190, 170, 30, 26
    width, height = 820, top + row_h * len(models) + 40
    hi = max(m["p99_ms"] for _, m in models) * 1.08
    sx = _scale(0, hi, left, width - right)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for t in _nice_ticks(0, hi):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{height - 35}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{height - 22}" font-size="10" text-anchor="middle">{t:g}</text>')
    for i, (name, m) in enumerate(models):
        y = top + i * row_h + row_h / 2
        c = "#555" if i == 0 else PALETTE[(i - 1) % len(PALETTE)]
        out.append(f'<text x="{left - 8}" y="{y + 4}" font-size="11" text-anchor="end">{escape(name)}</text>'
                   f'<rect x="{sx(m["p50_ms"]):.1f}" y="{y - 7}" width="{max(1.0, sx(m["p99_ms"]) - sx(m["p50_ms"])):.1f}" '
                   f'height="14" fill="{c}" opacity="0.35"><title>{escape(name)}: p50 {m["p50_ms"]:.2f} ms, '
                   f'p95 {m["p95_ms"]:.2f} ms, p99 {m["p99_ms"]:.2f} ms (n={m["n"]})</title></rect>')
        for key, w in (("p50_ms", 3), ("p95_ms", 1.5), ("p99_ms", 1.5)):
            out.append(f'<line x1="{sx(m[key]):.1f}" x2="{sx(m[key]):.1f}" y1="{y - 8}" y2="{y + 8}" stroke="{c}" stroke-width="{w}"/>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 5}" font-size="11" text-anchor="middle">'
               f'latency per {escape(unit)} at batch {escape(batch_size)}, ms (bar: p50 to p99; ticks at p50, p95, p99)</text>')
    out.append("</svg>")
    return "".join(out)


def scatter(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str,
            colors: list[str] | None = None, line: list[str] | None = None) -> str:
    """Labelled points (name, x, y); optional per-point colours and a dashed
    line through the named points (e.g. a Pareto front) in x order."""
    left, right, top, bottom = 60, 30, 30, 45
    width, height = 820, 340
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    xpad = (max(xs) - min(xs)) * 0.1 or 1.0
    ypad = (max(ys) - min(ys)) * 0.15 or 0.5
    x0, x1, y0, y1 = max(0.0, min(xs) - xpad), max(xs) + xpad, min(ys) - ypad, max(ys) + ypad
    sx, sy = _scale(x0, x1, left, width - right), _scale(y0, y1, height - bottom, top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    out += _axes([(sx(t), f"{t:g}") for t in _nice_ticks(x0, x1)], [(sy(t), f"{t:g}") for t in _nice_ticks(y0, y1)],
                  left, width - right, top, height - bottom)
    if line:
        pts = sorted((x, y) for n, x, y in points if n in line)
        out.append('<polyline class="front" fill="none" stroke="#2a7" stroke-dasharray="5 4" stroke-width="1.5" points="'
                   + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts) + '"/>')
    for i, (name, x, y) in enumerate(points):
        c = colors[i] if colors else ("#555" if i == 0 else PALETTE[(i - 1) % len(PALETTE)])
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="{c}"><title>{escape(name)}: {x:.2f}, {y:.2f}</title></circle>'
                   f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 6:.1f}" font-size="11">{escape(name)}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text x="14" y="{(top + height - bottom) / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{escape(ylabel)}</text></svg>')
    return "".join(out)


def line_chart(series: list[tuple[str, list[float], list[float]]], xlabel: str, ylabel: str, title: str) -> str:
    """Lines over a log2 x axis (sample counts)."""
    import math
    left, right, top, bottom = 60, 220, 30, 45
    width, height = 820, 300
    xs = [x for _, xx, _ in series for x in xx]
    ys = [y for _, _, yy in series for y in yy] + [1.0]
    lx0, lx1 = math.log2(min(xs)), math.log2(max(xs)) if max(xs) > min(xs) else math.log2(min(xs)) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05
    sx, sy = _scale(lx0, lx1, left, width - right), _scale(y0, y1, height - bottom, top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    out += _axes([(sx(k), str(2 ** k)) for k in range(int(lx0), int(lx1) + 1)],
                 [(sy(t), f"{t:g}") for t in _nice_ticks(y0, y1)], left, width - right, top, height - bottom)
    for i, (name, xx, yy) in enumerate(series):
        c = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{sx(math.log2(x)):.1f},{sy(y):.1f}" for x, y in zip(xx, yy))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="2"><title>{escape(name)}</title></polyline>')
    out.append(legend([n for n, _, _ in series], width - right + 15, top + 10))
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text x="14" y="{(top + height - bottom) / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{escape(ylabel)}</text></svg>')
    return "".join(out)
