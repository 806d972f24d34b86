"""Headless Chromium (Debian's package): load a page, return its DOM after
scripts ran and every console message or uncaught error it logged."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def load(page: Path, screenshot: Path | None = None, width: int = 1200, script: str | None = None) -> tuple[str, list[str]]:
    """The DOM after scripts ran, at a window `width` px wide; `script` (JavaScript) runs after
    the page's own, on a copy of the page, to measure its layout into the DOM."""
    exe = chromium()
    with tempfile.TemporaryDirectory() as profile:
        if script is not None:
            copy = Path(profile) / "page.html"
            copy.write_text(page.read_text().replace("</body>", f"<script>{script}</script></body>"))
            page = copy
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}/chrome", f"--window-size={width},2400"]
        r = subprocess.run(cmd + ["--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            subprocess.run(cmd + [f"--screenshot={screenshot}", page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if re.search(r"CONSOLE|Uncaught", line)]
    return r.stdout, console


def png_columns(path: Path, background: int = 250) -> tuple[int, int, list[int]]:
    """(width, height, for each pixel column: how many of its pixels are not near-white): a
    screenshot's structure, read with zlib alone (8-bit RGB/RGBA PNGs, as Chromium writes)."""
    import struct
    import zlib
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat = 8, b""
    w = h = bpp = 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), f"unsupported PNG (depth {depth}, colour type {color})"
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride = zlib.decompress(idat), w * bpp
    prev, counts, i = bytearray(stride), [0] * w, 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):            # undo the PNG row filter
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(w):
            if min(line[x * bpp:x * bpp + 3]) < background:
                counts[x] += 1
        prev = line
    return w, h, counts
