"""Versioned quantized artifacts: an embedded SQLite database plus one folder
per version.

    reg = Registry("registry/")                 # registry/registry.sqlite, registry/artifacts/<version>/
    row = reg.register(q, model, base="minilm-bbc", evidence={...})
    row["version"]                              # 'minilm-bbc-static-int8-v2'

Every version is `<base>-<recipe name>-v<N>` with a content hash and its
lineage (base-model hash, recipe, calibration fingerprint, library versions,
hardware, evaluation). Nothing is overwritten: other calibration data gives
other weights, another hash, the next N. Saving identical content again
returns the version already there.

How a save stays whole when processes race or die:
1. the artifact is written to a hidden temporary folder, outside any lock;
2. `BEGIN IMMEDIATE` takes SQLite's write lock, so concurrent savers queue;
   under it the next N is read, the folder renamed to its version name, the
   row inserted, and the transaction committed;
3. a process killed before the commit leaves no row (SQLite rolls back) and at
   most a folder no row points to, which the next save removes while holding
   the lock (no other saver can be between its rename and commit then).
A version exists exactly when its row does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import tempfile
import time
from pathlib import Path

from .errors import QuantgateError, require

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    version      TEXT PRIMARY KEY,
    base         TEXT NOT NULL,
    method       TEXT NOT NULL,
    n            INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    base_sha     TEXT NOT NULL,
    recipe       TEXT NOT NULL,
    calibration  TEXT,
    environment  TEXT NOT NULL,
    evaluation   TEXT,
    created      TEXT NOT NULL,
    UNIQUE (base, method, n)
);
"""
JSON_COLUMNS = ("recipe", "calibration", "environment", "evaluation")
STALE_TMP_S = 3600


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    require(s, f"cannot make a version name from {name!r}: give a base name with letters or digits")
    return s


def _crash_point(where: str) -> None:
    """Fault injection for the crash-safety tests: QUANTGATE_REGISTRY_CRASH_AT=where kills this process here."""
    if os.environ.get("QUANTGATE_REGISTRY_CRASH_AT") == where:
        os.kill(os.getpid(), signal.SIGKILL)


def default_root() -> Path:
    return Path(os.environ.get("QUANTGATE_REGISTRY", Path.home() / ".cache" / "quantgate" / "registry"))


class Registry:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.artifacts = self.root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "registry.sqlite"
        with self._connect() as con:
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db, timeout=120, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    # -- writing --------------------------------------------------------------
    def register(self, q, model, base: str | None = None, evidence: dict | None = None) -> dict:
        """Save a Quantized candidate as a new version (or return the identical one already saved)."""
        from .artifact import write
        base = slug(base or Path(model.path).name or "model")
        method = slug(q.name)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.artifacts))
        renamed: Path | None = None
        con = self._connect()
        try:
            manifest = write(q, model, tmp, evidence)
            con.execute("BEGIN IMMEDIATE")
            self._sweep(con)
            same = con.execute("SELECT version FROM versions WHERE base=? AND method=? AND content_hash=?",
                               (base, method, manifest["content_hash"])).fetchone()
            if same:
                con.execute("ROLLBACK")
                return self.get(same["version"]) | {"existing": True}
            n = con.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM versions WHERE base=? AND method=?",
                            (base, method)).fetchone()[0]
            version = f"{base}-{method}-v{n}"
            manifest["version"] = version
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            _crash_point("before-rename")
            dest = self.artifacts / version
            if dest.exists():          # a crashed save's leftover: no row points to it (checked under the lock)
                shutil.rmtree(dest)
            os.replace(tmp, dest)
            renamed = dest
            _crash_point("after-rename")
            con.execute(
                "INSERT INTO versions (version, base, method, n, content_hash, base_sha, recipe, calibration, "
                "environment, evaluation, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (version, base, method, n, manifest["content_hash"], model.sha, json.dumps(manifest["recipe"]),
                 json.dumps(manifest["calibration"]), json.dumps(manifest["environment"]),
                 json.dumps(evidence or {}, default=float), manifest["created"]))
            _crash_point("before-commit")
            con.execute("COMMIT")
            renamed = None
            return self.get(version) | {"existing": False}
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if renamed is not None:
                shutil.rmtree(renamed, ignore_errors=True)
            raise
        finally:
            con.close()
            shutil.rmtree(tmp, ignore_errors=True)

    def _sweep(self, con: sqlite3.Connection) -> None:
        """Remove folders left by crashed saves. Call only under the write lock."""
        known = {r[0] for r in con.execute("SELECT version FROM versions")}
        now = time.time()
        for p in self.artifacts.iterdir():
            if p.name.startswith(".tmp-"):
                if now - p.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            elif p.is_dir() and p.name not in known:
                shutil.rmtree(p, ignore_errors=True)

    # -- reading --------------------------------------------------------------
    def _row(self, r: sqlite3.Row) -> dict:
        d = dict(r)
        for k in JSON_COLUMNS:
            d[k] = json.loads(d[k]) if d[k] is not None else None
        d["path"] = str(self.artifacts / d["version"])
        return d

    def list(self, base: str | None = None) -> list[dict]:
        with self._connect() as con:
            q = "SELECT * FROM versions" + (" WHERE base=?" if base else "") + " ORDER BY base, method, n"
            return [self._row(r) for r in con.execute(q, (slug(base),) if base else ())]

    def get(self, version: str) -> dict:
        with self._connect() as con:
            r = con.execute("SELECT * FROM versions WHERE version=?", (version,)).fetchone()
        if r is None:
            known = [v["version"] for v in self.list()]
            raise QuantgateError(f"no version {version!r} in the registry at {self.root}; "
                                 f"it has: {', '.join(known[-8:]) or 'none'} (quantgate registry list)")
        d = self._row(r)
        d["manifest"] = json.loads((Path(d["path"]) / "manifest.json").read_text())
        return d

    def diff(self, a: str, b: str) -> list[tuple[str, object, object]]:
        """Lineage and evidence fields that differ between two versions: (key, a, b)."""
        da, db = (_flatten(self.get(v)["manifest"]) for v in (a, b))
        skip = ("created", "version", "quantize_seconds", "evidence.perf", "environment.threads")
        keys = sorted(set(da) | set(db))
        return [(k, da.get(k), db.get(k)) for k in keys
                if da.get(k) != db.get(k) and not k.startswith(skip) and ".perf." not in k]

    def export(self, version: str, dest: str | Path) -> Path:
        """Copy a version's folder (weights, recipe, manifest) to dest, which must not exist."""
        src = Path(self.get(version)["path"])
        from .report.files import atomic_dir
        dest = Path(dest)
        require(not dest.exists(), f"{dest} already exists: export to a new path")
        with atomic_dir(dest) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        return dest

    def check(self) -> dict:
        """Consistency: every row has its folder with a manifest of the same hash; folders without a row."""
        from safetensors.torch import load_file

        from .artifact import content_hash
        problems = []
        rows = self.list()
        for r in rows:
            p = Path(r["path"])
            if not (p / "manifest.json").is_file():
                problems.append(f"{r['version']}: folder or manifest missing")
                continue
            m = json.loads((p / "manifest.json").read_text())
            tensors = load_file(str(p / m["weights_file"])) if m.get("weights_file") else {}
            h = content_hash(tensors, m["recipe"], m["base_model"]["sha"], m["calibration"])
            if h != r["content_hash"] or m.get("version") != r["version"]:
                problems.append(f"{r['version']}: content hash {h} does not match the registered {r['content_hash']}")
        known = {r["version"] for r in rows}
        leftovers = sorted(p.name for p in self.artifacts.iterdir() if p.name not in known)
        return {"versions": len(rows), "problems": problems, "leftovers": leftovers}


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = json.dumps(d, sort_keys=True, default=str) if isinstance(d, list) else d
    return out
