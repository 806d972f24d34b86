"""Writing outputs atomically: to a temporary file beside the target, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_dir(dest: str | Path, replace: bool = False):
    """Yield a temporary folder beside `dest`; on success it becomes `dest`
    (an existing `dest` is an error unless `replace`); on failure it is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        if replace and dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_reports(comp, out_dir: str | Path) -> dict[str, Path]:
    from .html import render
    out = Path(out_dir)
    d = comp.to_dict()
    return {
        "json": atomic_write(out / "comparison.json", json.dumps(d, indent=2, default=float)),
        "html": atomic_write(out / "report.html", render(d)),
    }
