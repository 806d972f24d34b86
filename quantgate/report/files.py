"""Writing outputs atomically: to a temporary file beside the target, then
rename. What is written follows the user's umask (tempfile makes 0600/0700),
and an output path is checked before the work that fills it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path) -> None:
    """Give a file or folder made by tempfile the mode a plain open/mkdir would have."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def check_out_path(path: str | Path, what: str = "--out") -> Path:
    """Fail early, with one line, if `path` cannot be created: an ancestor is a
    file, or the nearest existing folder is not writable."""
    from ..errors import require
    p = Path(path)
    anc = p.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    require(anc.is_dir(), f"{what} {p} cannot be created: {anc} is a file, not a folder")
    require(os.access(anc, os.W_OK | os.X_OK), f"{what} {p} cannot be created: {anc} is not writable")
    return p


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    check_out_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    follow_umask(tmp)
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
    check_out_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    follow_umask(tmp)
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
