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

The registry owns only what it made. Every folder it creates carries a marker
file (MARKER) from its first moment; a sweep removes only marked folders: a
temporary folder whose writer is dead (or that is over an hour old), and a
marked version folder that no row points to. A folder without the marker (a
user's) is never touched. A registry whose database is missing but whose
artifacts are there is rebuilt from their manifests, not wiped.

Integrity: each artifact's manifest lists the SHA-256 of every file beside it;
`check()` (and `verify()` before export and load) recompute them and name the
file that differs.
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

from .artifact import read_manifest, verify_files
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
MARKER = ".quantgate-artifact"     # in every folder quantgate creates under artifacts/: "<pid> <start time>"
# (hidden, so an artifact's file hashes leave it out)


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


def mark(folder: Path) -> None:
    (folder / MARKER).write_text(f"{os.getpid()} {time.time():.0f}\n")


def _writer_alive(folder: Path) -> bool:
    try:
        pid = int((folder / MARKER).read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


class Registry:
    def __init__(self, root: str | Path | None = None, create: bool = True):
        """Open (and with `create`, make) the registry at root. Reading verbs pass
        create=False, so a mistyped path is an error, not a new empty registry."""
        self.root = Path(root) if root is not None else default_root()
        self.artifacts = self.root / "artifacts"
        self.db = self.root / "registry.sqlite"
        require(not self.root.exists() or self.root.is_dir(),
                f"--registry {self.root} is a file: give a folder (a new one, or one quantgate made)")
        require(not self.artifacts.exists() or self.artifacts.is_dir(),
                f"{self.artifacts} is a file, not a registry's artifacts folder: choose another --registry")
        require(not self.db.exists() or self.db.is_file(), f"{self.db} is not a file: choose another --registry")
        fresh = not self.db.exists()
        ours = self._marked_folders() if fresh else []
        if not create:
            require(not fresh or ours,
                    f"no registry at {self.root} (no registry.sqlite): check the path, or save a version there first")
        if create:
            self.artifacts.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise QuantgateError(f"{self.db} is not a quantgate registry database ({e}); move it aside: the "
                                 "registry is rebuilt from the artifacts' manifests on the next use") from None
        if ours:
            self.recovered = self._recover(ours)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db, timeout=120, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    def _marked_folders(self) -> list[Path]:
        if not self.artifacts.is_dir():
            return []
        return sorted(p for p in self.artifacts.iterdir()
                      if p.is_dir() and not p.name.startswith(".tmp-") and (p / MARKER).is_file())

    def _recover(self, folders: list[Path]) -> list[str]:
        """Rows for the artifacts of a registry whose database was lost, rebuilt from their manifests.
        A folder whose files do not match its manifest's hashes is left alone and not registered."""
        done = []
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            for p in folders:
                try:
                    m = read_manifest(p)
                except QuantgateError:
                    continue
                version, name = m.get("version"), m.get("name")
                if version != p.name or not isinstance(name, str) or verify_files(p, m):
                    continue
                method = slug(name)
                hit = re.fullmatch(rf"(.+)-{re.escape(method)}-v(\d+)", version)
                if not hit:
                    continue
                con.execute(
                    "INSERT OR IGNORE INTO versions (version, base, method, n, content_hash, base_sha, recipe, "
                    "calibration, environment, evaluation, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (version, hit.group(1), method, int(hit.group(2)), m["content_hash"],
                     (m.get("base_model") or {}).get("sha", ""), json.dumps(m.get("recipe")),
                     json.dumps(m.get("calibration")), json.dumps(m.get("environment") or {}),
                     json.dumps(m.get("evidence") or {}), m.get("created", "")))
                done.append(version)
            con.execute("COMMIT")
        return done

    # -- writing --------------------------------------------------------------
    def register(self, q, model, base: str | None = None, evidence: dict | None = None) -> dict:
        """Save a Quantized candidate as a new version (or return the identical one already saved)."""
        from .artifact import write
        base = slug(base or Path(model.path).name or "model")
        method = slug(q.name)
        from .report.files import follow_umask
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.artifacts))
        mark(tmp)
        follow_umask(tmp)
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
            if dest.exists():          # a crashed save's leftover (marked, no row: the sweep removed it) or not ours
                con.execute("ROLLBACK")
                raise QuantgateError(f"{dest} exists and is not a quantgate artifact: move it out of {self.artifacts}, "
                                     "or choose another --registry")
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
        """Remove what crashed saves left: marked temporary folders whose writer
        is dead (or over an hour old), and marked version folders no row points
        to. Unmarked folders are not quantgate's and stay. Call only under the write lock."""
        known = {r[0] for r in con.execute("SELECT version FROM versions")}
        now = time.time()
        for p in self.artifacts.iterdir():
            if not p.is_dir() or p.is_symlink() or not (p / MARKER).is_file():
                continue
            if p.name.startswith(".tmp-"):
                if not _writer_alive(p) or now - p.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            elif p.name not in known:
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
        d["manifest"] = read_manifest(Path(d["path"]))
        return d

    def verify(self, version: str) -> Path:
        """The version's folder, after checking every file against the hashes recorded at save time."""
        from .artifact import open_artifact
        d = self.get(version)
        require(d["manifest"]["content_hash"] == d["content_hash"],
                f"{version}: manifest content hash {d['manifest']['content_hash']} is not the registered "
                f"{d['content_hash']}; the artifact was replaced")
        open_artifact(d["path"], d["manifest"])
        return Path(d["path"])

    def diff(self, a: str, b: str) -> list[tuple[str, object, object]]:
        """Lineage and evidence fields that differ between two versions: (key, a, b)."""
        da, db = (_flatten(self.get(v)["manifest"]) for v in (a, b))
        skip = ("created", "version", "quantize_seconds", "evidence.perf", "environment.threads")
        keys = sorted(set(da) | set(db))
        return [(k, da.get(k), db.get(k)) for k in keys
                if da.get(k) != db.get(k) and not k.startswith(skip) and ".perf." not in k]

    def export(self, version: str, dest: str | Path) -> Path:
        """Copy a version's folder (weights, recipe, manifest) to dest, which must not exist."""
        from .report.files import atomic_dir, check_out_path
        dest = Path(dest)
        require(not dest.exists(), f"{dest} already exists: export to a new path")
        check_out_path(dest)
        src = self.verify(version)
        with atomic_dir(dest) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
        return dest

    def check(self) -> dict:
        """Consistency: every row has its folder, a manifest of the same hash and files
        matching the hashes recorded at save time; folders without a row."""
        problems = []
        rows = self.list()
        for r in rows:
            p = Path(r["path"])
            try:
                m = read_manifest(p)
            except QuantgateError as e:
                problems.append(f"{r['version']}: {e}")
                continue
            if m["content_hash"] != r["content_hash"] or m.get("version") != r["version"]:
                problems.append(f"{r['version']}: manifest content hash {m['content_hash']} does not match the "
                                f"registered {r['content_hash']}")
            problems += [f"{r['version']}: {x}" for x in verify_files(p, m)]
        known = {r["version"] for r in rows}
        leftovers = sorted(p.name for p in self.artifacts.iterdir() if p.name not in known) \
            if self.artifacts.is_dir() else []
        return {"versions": len(rows), "problems": problems, "leftovers": leftovers}


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = json.dumps(d, sort_keys=True, default=str) if isinstance(d, list) else d
    return out
