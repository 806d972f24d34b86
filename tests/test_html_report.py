"""The HTML report in a real headless Chromium: it renders, its script runs
without console errors, and it shows every candidate."""

import pytest

from browser import chromium, load

pytestmark = pytest.mark.skipif(chromium() is None, reason="Chromium is installed by `make test` (Debian package chromium)")


def test_the_console_check_catches_a_broken_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console = load(bad)
    assert any("undefinedFunction" in line for line in console)


def test_report_renders_every_candidate_without_console_errors(report_dir, comparison, tmp_path):
    dom, console = load(report_dir / "report.html", screenshot=tmp_path / "report.png")
    assert console == []
    assert 'data-ready="yes"' in dom                                # the page's script ran to the end
    assert f'data-candidates="{len(comparison.candidates)}"' in dom
    for c in comparison.candidates:
        assert f"<td>{c.name}</td>" in dom                            # summary row
        assert f"<option>{c.name}</option>" in dom                    # changed-examples filter
    assert dom.count("<svg") >= 2 + len(comparison.data["slices"])   # slices, latency per batch size, size-accuracy
    assert "quantized but slower" in dom                              # failures are shown, not only in JSON
    assert (tmp_path / "report.png").stat().st_size > 10_000
