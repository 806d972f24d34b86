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


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 x 10^k between lo and hi (both > 0)."""
    import math
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        out += [m * 10 ** k for m in (1, 2, 5) if lo <= m * 10 ** k <= hi]
    return out


def _value_axis(lo: float, hi: float, a: float, b: float, log_above: float = 8.0):
    """A scale for positive values: logarithmic when they span more than `log_above`x (one slow
    candidate would flatten the others on a linear axis), else linear from 0. (scale, ticks, kind)."""
    import math
    if lo > 0 and hi / lo > log_above:
        l0, l1 = math.log10(lo / 1.25), math.log10(hi * 1.25)
        f = _scale(l0, l1, a, b)
        return (lambda v: f(math.log10(max(v, 1e-12)))), _log_ticks(10 ** l0, 10 ** l1), "log"
    return _scale(0, hi * 1.08, a, b), _nice_ticks(0, hi * 1.08), "linear"


def latency_chart(models: list[tuple[str, dict]], batch_size: str, title: str, unit: str = "call") -> str:
    """One row per model: a bar from p50 to p99 with ticks at p50, p95 and p99, in ms; the axis
    turns logarithmic (and says so) when the models differ by more than 8x."""
    left, right, top, row_h = 190, 170, 30, 26
    width, height = 820, top + row_h * len(models) + 40
    sx, ticks, kind = _value_axis(min(m["p50_ms"] for _, m in models), max(m["p99_ms"] for _, m in models),
                                  left, width - right)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}" data-scale="{kind}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for t in ticks:
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
    scale = ", log scale" if kind == "log" else ""
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 5}" font-size="11" text-anchor="middle">'
               f'latency per {escape(unit)} at batch {escape(batch_size)}, ms{scale} (bar: p50 to p99; ticks at p50, p95, p99)</text>')
    out.append("</svg>")
    return "".join(out)


def _place_labels(pts: list[tuple[float, float, str]], lo: float, hi: float, line_h: float = 13,
                  char_w: float = 6.2) -> list[tuple[float, float]]:
    """Label positions right of each point: the nearest free line (down 1, up 1, down 2, ...)
    inside [lo, hi] where no two labels' boxes meet; below hi when none is free."""
    order = sorted(range(len(pts)), key=lambda i: (pts[i][1], pts[i][0]))
    placed: list[tuple[float, float, float]] = []      # x0, x1, y (baseline)
    pos = [(0.0, 0.0)] * len(pts)
    free = lambda lx, w, ly: not any(lx < b1 and a0 < lx + w and abs(ly - by) < line_h for a0, b1, by in placed)
    for i in order:
        x, y, text = pts[i]
        lx, w = x + 7, char_w * len(text)
        tries = [y - 6 + k * line_h for n in range(len(pts) + 1) for k in ((n, -n) if n else (0,))]
        ly = next((t for t in tries if lo <= t <= hi and free(lx, w, t)), None)
        if ly is None:
            ly = max(hi, y - 6)
            while not free(lx, w, ly):
                ly += line_h
        placed.append((lx, lx + w, ly))
        pos[i] = (lx, ly)
    return pos


def scatter(points: list[tuple[str, float, float]], xlabel: str, ylabel: str, title: str,
            colors: list[str] | None = None, line: list[str] | None = None) -> str:
    """Labelled points (name, x, y); optional per-point colours and a dashed
    line through the named points (e.g. a Pareto front) in x order. Labels
    never overlap (moved down, with a leader line to their point), so points
    at one place stay readable; the y axis turns logarithmic (and says so)
    when positive values span more than 4x."""
    import math
    left, right, top, bottom = 60, 30, 30, 45
    width = 820
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    xpad = (max(xs) - min(xs)) * 0.1 or 1.0
    log_y = min(ys) > 0 and max(ys) / min(ys) > 4
    x0, x1 = max(0.0, min(xs) - xpad), max(xs) + xpad
    height = 340
    sx = _scale(x0, x1, left, width - right)
    if log_y:
        l0, l1 = math.log10(min(ys) / 1.15), math.log10(max(ys) * 1.15)
        fy = _scale(l0, l1, height - bottom, top)
        sy = lambda v: fy(math.log10(v))
        yticks = _log_ticks(10 ** l0, 10 ** l1)
        ylabel += ", log scale"
    else:
        ypad = (max(ys) - min(ys)) * 0.15 or 0.5
        sy = _scale(min(ys) - ypad, max(ys) + ypad, height - bottom, top)
        yticks = _nice_ticks(min(ys) - ypad, max(ys) + ypad)
    px = [(sx(x), sy(y), name) for name, x, y in points]
    labels = _place_labels(px, top + 10, height - bottom - 4)
    height = max(height, int(max(ly for _, ly in labels)) + bottom)   # labels pushed below the plot: grow it
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{escape(title)}" data-yscale="{"log" if log_y else "linear"}">',
           f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    out += _axes([(sx(t), f"{t:g}") for t in _nice_ticks(x0, x1)], [(sy(t), f"{t:g}") for t in yticks],
                  left, width - right, top, 340 - bottom)
    if line:
        pts = sorted((x, y) for n, x, y in points if n in line)
        out.append('<polyline class="front" fill="none" stroke="#2a7" stroke-dasharray="5 4" stroke-width="1.5" points="'
                   + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts) + '"/>')
    for i, ((name, x, y), (cx, cy, _), (lx, ly)) in enumerate(zip(points, px, labels)):
        c = colors[i] if colors else ("#555" if i == 0 else PALETTE[(i - 1) % len(PALETTE)])
        if ly - (cy - 6) > 4:       # moved: a leader line back to its point
            out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{lx - 2:.1f}" y2="{ly - 4:.1f}" stroke="{c}" '
                       f'stroke-width="0.8" opacity="0.7"/>')
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{c}" fill-opacity="0.8"><title>{escape(name)}: '
                   f'{x:.2f}, {y:.2f}</title></circle><text class="point-label" x="{lx:.1f}" y="{ly:.1f}" '
                   f'font-size="11">{escape(name)}</text>')
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" font-size="11" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text x="14" y="{(top + 340 - bottom) / 2}" font-size="11" text-anchor="middle" '
               f'transform="rotate(-90 14 {(top + 340 - bottom) / 2})">{escape(ylabel)}</text></svg>')
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
