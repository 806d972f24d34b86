"""Never lose a user's files, never crash on bad input.

- The registry owns only what it made: a user's folder under artifacts/
  survives a save, a registry whose database was lost is rebuilt from the
  manifests, a damaged artifact is refused with the file that is wrong.
- A table-driven suite runs every verb over malformed inputs and asserts exit
  2, one bounded line that names the problem, and no new or changed file in
  the working folder.
- Recipe parsing, property-based: any mapping or short name builds a valid
  recipe that round-trips, or raises the one user-error type with a bounded
  message."""

import json
import os
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from quantgate.cli import main
from quantgate.errors import MAX_MESSAGE, QuantgateError
from quantgate.quantize import quantize
from quantgate.recipes import Recipe, WeightOnly
from quantgate.registry import Registry


def test_a_users_folder_under_artifacts_survives_a_save(model, tmp_path):
    keep = tmp_path / "proj" / "artifacts" / "keep-me"
    keep.mkdir(parents=True)
    (keep / "notes.txt").write_text("x")
    reg = Registry(tmp_path / "proj")
    row = reg.register(quantize(model, WeightOnly(bits=8)), model, base="m")
    assert (keep / "notes.txt").read_text() == "x"                    # the data-loss bug: it was deleted here
    assert reg.check()["leftovers"] == ["keep-me"] and reg.check()["problems"] == []
    assert row["version"] == "m-int8-v1"


def test_a_registry_without_its_database_is_rebuilt_not_wiped(model, tmp_path):
    root = tmp_path / "reg"
    reg = Registry(root)
    a = reg.register(quantize(model, WeightOnly(bits=8)), model, base="m")
    b = reg.register(quantize(model, WeightOnly(bits=8, min_out_features=400)), model, base="m")
    (root / "registry.sqlite").unlink()
    again = Registry(root)
    assert sorted(again.recovered) == sorted([a["version"], b["version"]])
    assert [r["content_hash"] for r in again.list()] == [a["content_hash"], b["content_hash"]]
    c = again.register(quantize(model, WeightOnly(bits=8, group_size=32)), model, base="m")
    assert c["version"] == "m-int8-g32-v1" and Path(a["path"]).is_dir() and Path(b["path"]).is_dir()


def test_a_damaged_artifact_is_refused_with_the_file_that_is_wrong(model, tmp_path, capsys):
    root = tmp_path / "reg"
    row = Registry(root).register(quantize(model, WeightOnly(bits=8)), model, base="m")
    w = Path(row["path"]) / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])            # truncated
    assert main(["registry", "export", row["version"], str(tmp_path / "out"), "--registry", str(root)]) == 2
    err = capsys.readouterr().err
    assert "weights.safetensors differs from the hash recorded at save time" in err and not (tmp_path / "out").exists()
    assert main(["registry", "check", "--registry", str(root)]) == 1
    assert "weights.safetensors" in capsys.readouterr().out
    (Path(row["path"]) / "manifest.json").write_text("{not json")
    assert main(["registry", "show", row["version"], "--registry", str(root)]) == 2
    assert "is damaged (not valid JSON" in capsys.readouterr().err


def test_an_exclude_string_is_not_a_list_of_patterns():
    with pytest.raises(QuantgateError, match="exclude must be a list of module-name patterns"):
        Recipe.from_dict({"method": "weight-only", "bits": 8, "exclude": "*attention*"})
    with pytest.raises(QuantgateError, match="exclude must be a list"):
        Recipe.from_dict({"method": "weight-only", "exclude": 5})
    with pytest.raises(QuantgateError, match="at most 1000 are allowed"):
        Recipe.from_dict({"method": "weight-only", "exclude": [f"p{i}" for i in range(5000)]})
    assert Recipe.parse("int4-g64-search-asym") == Recipe.parse("int4-g64-asym-search")   # flags in any order


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, finetuned_dir):
    """Malformed inputs of every kind, made once."""
    d = tmp_path_factory.mktemp("bad")
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "big.yaml").write_text("method: weight-only\nexclude:\n" + "".join(f"  - p{i}\n" for i in range(200_000)))
    (d / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                                 "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                                 "method: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n")
    (d / "excl5.yaml").write_text("method: weight-only\nexclude: 5\n")
    (d / "a_file").write_text("not a folder")
    (d / "notdb").mkdir()
    (d / "notdb" / "registry.sqlite").write_text("this is not a database")
    trunc = d / "trunc-model"
    trunc.mkdir()
    for f in Path(finetuned_dir).iterdir():
        (trunc / f.name).write_bytes(f.read_bytes())
    st_ = trunc / "model.safetensors"
    st_.write_bytes(st_.read_bytes()[:4096])
    header = d / "header-model"
    header.mkdir()
    for f in Path(finetuned_dir).iterdir():
        (header / f.name).write_bytes(f.read_bytes())
    raw = bytearray((header / "model.safetensors").read_bytes())
    raw[8:20] = b"#!garbage!#@"
    (header / "model.safetensors").write_bytes(bytes(raw))
    badcfg = d / "badcfg-model"
    badcfg.mkdir()
    (badcfg / "config.json").write_text("{architectures: nope")
    (d / "comparison.json").write_text(json.dumps({"candidates": [{"name": "x"}], "data": {}}))
    (d / "texts.txt").write_text("hello\n")
    return d


CASES = [
    (["quantize", "--model", "{bad}/trunc-model", "--recipe", "int8", "--out", "{work}/o"], "safetensors"),
    (["compare", "--model", "{bad}/header-model", "--recipes", "int8"], "safetensors"),
    (["quantize", "--model", "{bad}/badcfg-model", "--recipe", "int8", "--out", "{work}/o"], "not valid JSON"),
    (["registry", "list", "--registry", "{bad}/notdb"], "not a quantgate registry database"),
    (["quantize", "--model", "{model}", "--recipe", "int8", "--registry", "{bad}/a_file"], "is a file"),
    (["quantize", "--model", "{model}", "--recipe", "{bad}/binary.yaml", "--out", "{work}/o"], "is not text"),
    (["quantize", "--model", "{model}", "--recipe", "{bad}/big.yaml", "--out", "{work}/o"], "a recipe is at most"),
    (["quantize", "--model", "{model}", "--recipe", "{bad}/bomb.yaml", "--out", "{work}/o"], "recipe method must be one of"),
    (["quantize", "--model", "{model}", "--recipe", "{bad}/excl5.yaml", "--out", "{work}/o"], "exclude must be a list"),
    (["quantize", "--model", "{model}", "--recipe", "int8", "--out", "{bad}/a_file/o"], "is a file, not a folder"),
    (["compare", "--model", "{model}", "--recipes", "int8", "--out", "{bad}/a_file/r"], "is a file, not a folder"),
    (["quantize", "--model", "{model}", "--recipe", "int8", "--out", "{bad}"], "already exists"),
    (["quantize", "--model", "{model}", "--recipe", "int8", "--out", "{bad}", "--overwrite"], "not a quantgate artifact"),
    (["quantize", "--model", "{model}", "--recipe", "int8", "--out", "{work}/o", "--calibration-offset", "-1"],
     "expected an integer >= 0"),
    (["compare", "--model", "{model}", "--max-length", "0"], "expected an integer >= 8"),
    (["finetune", "--epochs", "0"], "expected an integer >= 1"),
    (["lm", "compare", "--windows", "-1"], "expected an integer >= 0"),
    (["lm", "quantize", "--recipes", "static", "--out", "{work}/o"], "is for classifiers"),
    (["lm", "quantize", "--recipes", "dynamic", "--out", "{work}/o"], "is for classifiers"),
    (["quantize", "--model", "{model}", "--recipe", "gptq-int4-g128", "--out", "{work}/o"], "is for causal language models"),
    (["gate", "{bad}/comparison.json"], "not a complete quantgate comparison"),
    (["registry", "list", "--registry", "{work}/no-such-registry"], "no registry at"),
    (["compare", "--model", "{model}", "--data", "{bad}"], "is a folder"),
    (["monitor", "{bad}", "--inputs", "{bad}/texts.txt"], "not a quantgate artifact"),
    (["lm", "compare", "--task", "{bad}/texts.txt"], "unsupported data file type"),
    (["compare", "--model", "{model}", "--threads", "0"], "expected an integer >= 1"),
    (["compare", "--model", "{model}", "--recipes", "dynamic,int8", "--memory-limit", "0.1"],
     "this comparison would need about"),
    (["lm", "compare", "--model", "{lm}", "--data", "{bad}/texts.txt", "--recipes", "int4-g128,gptq-int4-g128",
      "--memory-limit", "0.5"], "quantizing gptq-int4-g128: the working copy and its method's work"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(c[0][:2]) + f" #{i}" for i, c in enumerate(CASES)])
def test_every_verb_refuses_bad_input_with_one_line_and_touches_nothing(args, message, corpus, finetuned_dir, tmp_path,
                                                                        capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before, bad_before = _snapshot(work), _snapshot(corpus)
    from quantgate.models import default_lm_dir
    argv = [a.format(bad=corpus, work=work, model=finetuned_dir, lm=default_lm_dir()) for a in args]
    with pytest.raises(SystemExit) if args[-1] in ("0", "-1") or "--threads" in args else _nullcontext() as exit_:
        code = main(argv)
    if exit_ is not None and hasattr(exit_, "value"):
        code = exit_.value.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and len(lines[0]) <= MAX_MESSAGE + 80, lines
    assert message in lines[0], lines[0]
    assert _snapshot(work) == before and _snapshot(corpus) == bad_before


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_files_follow_the_umask(model, tmp_path):
    from quantgate.artifact import save
    old = os.umask(0o022)
    try:
        out = save(quantize(model, WeightOnly(bits=8)), model, tmp_path / "a")
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o755 and ((out / "manifest.json").stat().st_mode & 0o777) == 0o644


def test_rows_without_text_are_counted(tmp_path):
    from quantgate.data import load_table
    f = tmp_path / "d.csv"
    f.write_text("text,label\nhello,a\n,b\n   ,a\nworld,b\n")
    ds = load_table(f)
    assert len(ds) == 2 and ds.dropped == 2


names = st.one_of(
    st.builds(lambda b, g, flags: "-".join([f"int{b}"] + ([f"g{g}"] if g else []) + flags),
              st.integers(0, 9), st.one_of(st.none(), st.integers(0, 300)),
              st.lists(st.sampled_from(["asym", "search", "head8", "head4", "head3", "x"]), max_size=3, unique=True)),
    st.builds(lambda b, g, flags: "-".join(["gptq", f"int{b}", f"g{g}"] + flags), st.integers(0, 9), st.integers(0, 300),
              st.lists(st.sampled_from(["act", "noact", "nosearch", "asym", "head8", "y"]), max_size=3, unique=True)),
    st.text(max_size=30),
)
values = st.one_of(st.none(), st.booleans(), st.integers(-5, 600), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.text(max_size=5), max_size=4))


@settings(max_examples=300, deadline=None)
@given(names)
def test_any_short_name_builds_a_recipe_or_one_bounded_error(spec):
    try:
        r = Recipe.parse(spec)
    except QuantgateError as e:
        assert 0 < len(str(e)) <= MAX_MESSAGE and "\n" not in str(e)
        return
    assert Recipe.from_dict(r.to_dict()) == r and Recipe.parse(r.name.split("+")[0]) == r


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["weight-only", "gptq", "static-int8", "dynamic-int8", "nf4", "qlora", "qat", "nope"]),
       st.dictionaries(st.sampled_from(["bits", "group_size", "symmetric", "exclude", "num_samples", "seq_len",
                                        "damp", "rank", "targets", "block_size", "lr", "extra"]), values, max_size=4))
def test_any_mapping_builds_a_recipe_or_one_bounded_error(method, fields):
    try:
        r = Recipe.from_dict({"method": method, **fields})
    except QuantgateError as e:
        assert 0 < len(str(e)) <= MAX_MESSAGE and "\n" not in str(e)
        return
    assert Recipe.from_dict(json.loads(r.to_json())) == r


def test_a_registry_database_that_is_not_sqlite_is_one_line(tmp_path):
    (tmp_path / "registry.sqlite").write_text("nope")
    with pytest.raises(QuantgateError, match="not a quantgate registry database"):
        Registry(tmp_path)
    assert isinstance(sqlite3.sqlite_version, str)
