import json

import pytest

from quantgate.data import bbc_splits, length_bucket, load_bbc, load_table, split
from quantgate.errors import QuantgateError


def test_bbc_is_complete_and_splits_are_deterministic_disjoint_and_stratified():
    ds = load_bbc()
    assert len(ds) == 2225 and ds.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    a, b = bbc_splits(), bbc_splits()
    assert {k: v.ids for k, v in a.items()} == {k: v.ids for k, v in b.items()}
    ids = [set(v.ids) for v in a.values()]
    assert sum(map(len, ids)) == 2225 and len(set.union(*ids)) == 2225
    for part in a.values():  # every topic in every split, in proportion (within 2 points)
        for topic in ds.label_names:
            share = part.labels.count(topic) / len(part)
            assert abs(share - ds.labels.count(topic) / len(ds)) < 0.02
    assert set(a["test"].slices) == {"topic", "length"}
    assert split(ds, seed=1)["test"].ids != a["test"].ids


def test_length_buckets():
    assert length_bucket("word " * 10).startswith("short")
    assert length_bucket("word " * 300).startswith("medium")
    assert length_bucket("word " * 900).startswith("long")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_load_table_formats(tmp_path, fmt):
    import pandas as pd
    df = pd.DataFrame({"body": ["good film", "bad film", "fine"], "y": ["pos", "neg", "pos"], "src": ["a", "b", "a"]})
    p = tmp_path / f"d.{fmt}"
    {"jsonl": lambda: df.to_json(p, orient="records", lines=True), "csv": lambda: df.to_csv(p, index=False),
     "parquet": lambda: df.to_parquet(p)}[fmt]()
    ds = load_table(p, "body", "y", ["src"])
    assert ds.texts == ["good film", "bad film", "fine"] and ds.labels == ["pos", "neg", "pos"]
    assert ds.slices["src"] == ["a", "b", "a"] and "length" in ds.slices


def test_load_table_errors_name_the_problem(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": "x", "label": "y"}) + "\n")
    with pytest.raises(QuantgateError, match=r"has no column 'body' \(named by --text-col\); its columns are: text, label"):
        load_table(p, "body", "label")
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(QuantgateError, match="is empty"):
        load_table(empty)
    with pytest.raises(QuantgateError, match="data file not found"):
        load_table(tmp_path / "missing.csv")
    with pytest.raises(QuantgateError, match="unsupported data file type '.xlsx'"):
        (tmp_path / "d.xlsx").write_text("x")
        load_table(tmp_path / "d.xlsx")
