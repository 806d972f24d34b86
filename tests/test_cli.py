"""The command line: clear one-line errors for bad input, and `compare` on a
classifier and a dataset the project has never seen."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from quantgate.cli import main


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rows = []
    for i in range(60):
        good = i % 2 == 0
        rows.append({"review": ("a wonderful, moving film with great acting " if good else
                                "a dull, boring film with awful acting ") * (1 + i % 3) + f"number {i}",
                     "sentiment": "pos" if good else "neg", "channel": ["web", "app", "store"][i % 3]})
    p = d / "reviews.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def unseen_model(tmp_path_factory):
    """A DistilBERT classifier quantgate never saw, saved as a Hugging Face directory."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from quantgate.finetune import default_base_model
    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=30522, dim=64, hidden_dim=256, n_layers=2, n_heads=4, max_position_embeddings=128,
                           num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    out = tmp_path_factory.mktemp("unseen") / "distilbert-reviews"
    DistilBertForSequenceClassification(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(default_base_model()).save_pretrained(out)
    return out


def run(capsys, *args):
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("args,message", [
    (["compare", "--model", "/nonexistent/model"], "model directory not found: /nonexistent/model"),
    (["quantize", "--model", "{model}", "--recipe", "int5-g32", "--out", "{tmp}/a"], "bits must be one of 2, 3, 4, 8, got 5"),
    (["quantize", "--model", "{model}", "--recipe", "int4-g0", "--out", "{tmp}/a"], "group_size must be a positive integer"),
    (["compare", "--model", "{model}", "--data", "{csv}", "--text-col", "body", "--label-col", "sentiment"],
     "has no column 'body' (named by --text-col); its columns are: review, sentiment, channel"),
    (["compare", "--model", "{model}", "--data", "{empty}", "--text-col", "review", "--label-col", "sentiment"],
     "is empty"),
    (["evaluate", "--model", "{bbc_model}", "--data", "{csv}", "--text-col", "review", "--label-col", "sentiment"],
     "has label(s) the model does not know: ['neg', 'pos']"),
    (["compare", "--model", "{model}", "--batch-sizes", "1,x"], "--batch-sizes must be comma-separated positive integers"),
])
def test_bad_input_gets_one_clear_line(capsys, tmp_path, csv_data, unseen_model, finetuned_dir, args, message):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    fill = {"{model}": unseen_model, "{tmp}": tmp_path, "{csv}": csv_data, "{empty}": empty, "{bbc_model}": finetuned_dir}
    args = [fill.get(a, a) if a in fill else a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "a").exists()


def test_not_a_classifier_directory(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    code, _, err = run(capsys, "compare", "--model", tmp_path)
    assert code == 2 and "is not a sequence-classification model" in err and "quantgate finetune" in err


def test_compare_on_an_unseen_model_and_dataset(tmp_path, csv_data, unseen_model):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "quantgate.cli", "compare", "--model", str(unseen_model),
                        "--data", str(csv_data), "--text-col", "review", "--label-col", "sentiment",
                        "--slice-col", "channel", "--recipes", "dynamic,static,int8", "--batch-sizes", "1,32",
                        "--perf-seconds", "0.2", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "held-out 20%" in r.stderr                                  # says where calibration came from
    d = json.loads((out / "comparison.json").read_text())
    assert d["data"]["n"] == 48 and d["data"]["calibration"]["n"] == 12
    assert d["data"]["slices"]["channel"] == ["app", "store", "web"]
    assert [c["name"] for c in d["candidates"]] == ["dynamic", "static", "int8"]
    static = d["candidates"][1]
    assert static["calibration"]["count"] == 12 and len(static["quantized_layers"]) > 0
    assert {r["value"] for r in static["slices"]["channel"]} == {"app", "store", "web"}
    assert "static" in r.stdout and str(out / "report.html") in r.stdout


def test_quantize_writes_a_complete_artifact(capsys, tmp_path, finetuned_dir):
    out = tmp_path / "art"
    code, stdout, err = run(capsys, "quantize", "--model", finetuned_dir, "--recipe", "int4-g64", "--out", out)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["recipe"] == {"method": "weight-only", "bits": 4, "group_size": 64, "symmetric": True, "scale_search": False,
                           "head_bits": None, "head_group_size": None, "exclude": [], "min_out_features": 16,
                           "int8_layers": []}
    assert len(m["base_model"]["sha"]) == 16 and m["environment"]["torch"].startswith("2.13")
    from safetensors.torch import load_file
    w = load_file(out / "weights.safetensors")
    assert w["model.bert.encoder.layer.0.attention.self.query.qweight"].shape == (384, 192)   # two int4 per byte
    code, _, err = run(capsys, "quantize", "--model", finetuned_dir, "--recipe", "int8", "--out", out)
    assert code == 2 and "already exists" in err                  # never a silent overwrite
