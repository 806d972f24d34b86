"""The registry: versions never overwrite, identical inputs give identical
hashes, concurrent saves both land, and a save killed midway leaves the
registry consistent."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from quantgate.cli import main
from quantgate.errors import QuantgateError
from quantgate.quantize import quantize
from quantgate.recipes import WeightOnly
from quantgate.registry import Registry

SAVER = textwrap.dedent("""
    import sys, time, json
    from pathlib import Path
    from quantgate.models import load_classifier
    from quantgate.quantize import quantize
    from quantgate.recipes import WeightOnly
    from quantgate.registry import Registry
    model_dir, root, symmetric, barrier = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    reg = Registry(root)
    q = quantize(load_classifier(model_dir), WeightOnly(bits=8, min_out_features=16 if symmetric else 400))
    Path(barrier, f"ready-{int(symmetric)}").touch()
    while len(list(Path(barrier).glob("ready-*"))) < int(sys.argv[5]):   # start the saves together
        time.sleep(0.01)
    row = reg.register(q, load_classifier(model_dir), base="minilm-bbc")
    print(json.dumps({"version": row["version"], "hash": row["content_hash"]}))
""")


def saver(finetuned_dir, root, symmetric, barrier, parties, env=None):
    return subprocess.Popen([sys.executable, "-c", SAVER, str(finetuned_dir), str(root), "1" if symmetric else "0",
                             str(barrier), str(parties)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_same_inputs_same_hash_and_no_duplicate_version(model, tmp_path):
    reg = Registry(tmp_path / "reg")
    a = reg.register(quantize(model, WeightOnly(bits=8)), model, base="minilm-bbc")
    b = reg.register(quantize(model, WeightOnly(bits=8)), model, base="minilm-bbc")   # re-quantized from scratch
    assert a["version"] == "minilm-bbc-int8-v1" and not a["existing"]
    assert b["version"] == a["version"] and b["existing"] and b["content_hash"] == a["content_hash"]
    c = reg.register(quantize(model, WeightOnly(bits=8, min_out_features=400)), model, base="minilm-bbc")
    assert c["version"] == "minilm-bbc-int8-v2" and c["content_hash"] != a["content_hash"]
    assert reg.check() == {"versions": 2, "problems": [], "leftovers": []}
    # the manifest carries the lineage
    m = reg.get(c["version"])["manifest"]
    assert m["base_model"]["sha"] == model.sha and m["recipe"]["min_out_features"] == 400
    assert {"torch", "torchao", "transformers", "processor"} <= set(m["environment"])
    with pytest.raises(QuantgateError, match="no version 'nope' in the registry"):
        reg.get("nope")


def test_two_processes_saving_at_once_get_distinct_versions(finetuned_dir, tmp_path):
    root, barrier = tmp_path / "reg", tmp_path / "barrier"
    barrier.mkdir()
    Registry(root)
    procs = [saver(finetuned_dir, root, sym, barrier, 2) for sym in (True, False)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    rows = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sorted(r["version"] for r in rows) == ["minilm-bbc-int8-v1", "minilm-bbc-int8-v2"]
    assert Registry(root).check() == {"versions": 2, "problems": [], "leftovers": []}


@pytest.mark.parametrize("where", ["before-rename", "after-rename", "before-commit"])
def test_a_save_killed_midway_leaves_the_registry_consistent(finetuned_dir, model, tmp_path, where):
    root, barrier = tmp_path / "reg", tmp_path / "barrier"
    barrier.mkdir()
    reg = Registry(root)
    reg.register(quantize(model, WeightOnly(bits=8)), model, base="minilm-bbc")           # v1 exists
    p = saver(finetuned_dir, root, False, barrier, 1, env={"QUANTGATE_REGISTRY_CRASH_AT": where})
    _, err = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    state = reg.check()
    assert state["versions"] == 1 and state["problems"] == []                            # no half-registered v2
    assert [r["version"] for r in reg.list()] == ["minilm-bbc-int8-v1"]
    # the next save cleans up what the dead one left and takes v2
    row = reg.register(quantize(model, WeightOnly(bits=8, min_out_features=400)), model, base="minilm-bbc")
    assert row["version"] == "minilm-bbc-int8-v2"
    leftovers = reg.check()["leftovers"]
    assert [x for x in leftovers if not x.startswith(".tmp-")] == []                     # no orphan version folder


def test_new_calibration_is_a_new_version_and_diff_shows_the_fingerprint(finetuned_dir, tmp_path, capsys):
    root = tmp_path / "reg"
    common = ["quantize", "--model", finetuned_dir, "--recipe", "static", "--registry", root, "--name", "minilm-bbc",
              "--calibration-samples", "64"]
    assert main([str(a) for a in common]) == 0
    assert main([str(a) for a in common + ["--calibration-offset", "64"]]) == 0
    out = capsys.readouterr().out
    assert "registered minilm-bbc-static-v1" in out and "registered minilm-bbc-static-v2" in out
    assert main(["registry", "diff", "minilm-bbc-static-v1", "minilm-bbc-static-v2", "--registry", str(root)]) == 0
    diff = capsys.readouterr().out
    assert "calibration.hash:" in diff and "content_hash:" in diff and "calibration.source:" in diff
    assert "recipe." not in diff and "base_model.sha" not in diff                        # same recipe, same base
    assert main(["registry", "list", "--registry", str(root)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("minilm-bbc-static-v") == 2
    dest = tmp_path / "exported"
    assert main(["registry", "export", "minilm-bbc-static-v2", str(dest), "--registry", str(root)]) == 0
    assert json.loads((dest / "manifest.json").read_text())["version"] == "minilm-bbc-static-v2"
    assert (dest / "activation_profile.json").is_file() and (dest / "weights.safetensors").stat().st_size > 5e6
    assert main(["registry", "export", "minilm-bbc-static-v2", str(dest), "--registry", str(root)]) == 2
    assert "already exists" in capsys.readouterr().err
