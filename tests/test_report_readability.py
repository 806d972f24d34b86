"""The report tells the truth at a glance: bits per parameter from the stored
bytes, each model's own memory, charts whose scales and labels stay readable
(measured in a real Chromium), and tables that fit the page."""

import json
from pathlib import Path

import pytest

from browser import chromium, load, png_columns

needs_chromium = pytest.mark.skipif(chromium() is None, reason="Chromium is installed by `make test` (Debian package chromium)")

# Measures the page as laid out: the document's scroll width, each table's right edge, the body's,
# and how many pairs of point labels in any chart overlap.
LAYOUT = """
(function () {
  const out = {scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
               body: document.body.getBoundingClientRect().right, tables: {}, overlaps: 0, labels: 0};
  for (const t of document.querySelectorAll('table[id]')) out.tables[t.id] = t.getBoundingClientRect().right;
  for (const svg of document.querySelectorAll('svg')) {
    const b = Array.from(svg.querySelectorAll('text.point-label')).map(e => e.getBBox());
    out.labels += b.length;
    for (let i = 0; i < b.length; i++) for (let j = i + 1; j < b.length; j++)
      if (b[i].x < b[j].x + b[j].width && b[j].x < b[i].x + b[i].width &&
          b[i].y < b[j].y + b[j].height && b[j].y < b[i].y + b[i].height) out.overlaps++;
  }
  document.body.dataset.layout = JSON.stringify(out);
})();
"""


def layout(page: Path, width: int = 1400) -> dict:
    import html
    import re
    dom, console = load(page, width=width, script=LAYOUT)
    assert console == []
    return json.loads(html.unescape(re.search(r'data-layout="([^"]*)"', dom).group(1)))


def test_bits_per_parameter_are_the_stored_bytes(tmp_path):
    """From the file: the artifact's tensors x 8 / the fp32 model's parameters; the quantized layers alone at
    4.25 bits (int4, an fp16 scale per 64 weights); the tied embedding named as what stays in float."""
    from safetensors import safe_open

    from quantgate.artifact import save
    from quantgate.models import load_causal_lm
    from quantgate.quantize import quantize
    from quantgate.recipes import WeightOnly
    lm = load_causal_lm()
    q = quantize(lm, WeightOnly(bits=4, group_size=64))
    f = q.footprint
    folder = save(q, lm, tmp_path / "a")
    stored, in_layers = 0, 0
    with safe_open(str(folder / "weights.safetensors"), "pt") as st:
        for k in st.keys():
            t = st.get_tensor(k)
            stored += t.numel() * t.element_size()
            if k.rsplit(".", 1)[0] in q.quantized_layers:
                in_layers += t.numel() * t.element_size()
    assert f["parameters"] == sum(p.numel() for p in lm.module.parameters())      # the tied head counted once
    assert abs(f["bits_per_param"] - 8 * stored / f["parameters"]) < 1e-9
    assert abs(f["quantized_bits_per_weight"] - 8 * in_layers / f["quantized_parameters"]) < 1e-9
    assert f["quantized_bits_per_weight"] == pytest.approx(4.25)
    top = f["largest_float"][0]
    assert top["name"] == "model.embed_tokens.weight = lm_head.weight" and 0.2 < top["share"] < 0.22
    assert f["float_share"] == pytest.approx(top["share"], abs=1e-3)
    assert f["float_layers"]["lm_head"] == top["parameters"]


def test_a_slow_candidate_turns_the_latency_axis_logarithmic():
    """25x slower: on a linear axis the fast ones would sit within a few pixels of each other."""
    import re

    from quantgate.report import svg
    m = lambda ms: {"p50_ms": ms, "p95_ms": ms * 1.1, "p99_ms": ms * 1.2, "n": 10}
    fast = [("fp32", m(1.0)), ("int8", m(0.5)), ("int4", m(0.7))]
    log = svg.latency_chart(fast + [("nf4", m(25.0))], "1", "batch 1")
    lin = svg.latency_chart(fast, "1", "batch 1")
    assert 'data-scale="log"' in log and "log scale" in log and 'data-scale="linear"' in lin
    xs = [float(x) for x in re.findall(r'<rect x="([\d.]+)"', log)]
    assert min(abs(a - b) for i, a in enumerate(xs[:3]) for b in xs[i + 1:3]) > 20     # the fast ones stay apart


@needs_chromium
def test_labels_of_coincident_points_do_not_overlap(tmp_path):
    from quantgate.report import svg
    pts = [("fp32", 513.0, 89.9), ("int8", 220.0, 89.9), ("int8-search", 220.0, 89.9), ("int8-asym", 220.5, 89.8),
           ("int4-g128", 150.0, 84.0), ("int3-g128", 140.0, 7.5)]
    page = tmp_path / "s.html"
    page.write_text(f"<html><body>{svg.scatter(pts, 'MB', 'exact match', 'size')}</body></html>")
    got = layout(page)
    assert got["labels"] == len(pts) and got["overlaps"] == 0


@needs_chromium
def test_the_classifier_report_fits_the_page(report_dir, tmp_path):
    got = layout(report_dir / "report.html")
    assert got["scroll"] <= got["inner"], "the page scrolls sideways"
    assert set(got["tables"]) >= {"summary", "costs"} and max(got["tables"].values()) <= got["body"] + 1
    assert got["overlaps"] == 0
    # The screenshot's structure: content inside the page's column, none in a strip past it (the
    # scrollbar's 15 px at the right edge aside).
    load(report_dir / "report.html", screenshot=tmp_path / "r.png", width=1400)
    w, h, cols = png_columns(tmp_path / "r.png")
    inked = [x for x, n in enumerate(cols) if n]
    assert w == 1400 and inked and max(x for x in inked if x < w - 15) <= got["body"] + 2
    assert sum(1 for x in range(int(got["body"]) + 3, w - 15) if cols[x]) == 0
