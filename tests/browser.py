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


def load(page: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    exe = chromium()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}"]
        r = subprocess.run(cmd + ["--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            subprocess.run(cmd + [f"--screenshot={screenshot}", "--window-size=1200,2400", page.resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if re.search(r"CONSOLE|Uncaught", line)]
    return r.stdout, console
