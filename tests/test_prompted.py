"""A fine-tuned language model proven on its own task: the bundled SmolLM2
fine-tuned on BBC topic labelling (prompt -> topic word), compared on held-out
prompts with exact match per slice, changed answers, the gate on the task
metric, the HTML report in Chromium; multiple choice by log-likelihood; and
the slice-drop warning."""

import json

import numpy as np
import pytest

from browser import chromium, load
from quantgate.cli import main
from quantgate.errors import QuantgateError

N_PROMPTS = 100


@pytest.fixture(scope="session")
def tuned_lm():
    from quantgate.finetune import default_finetuned_lm
    from quantgate.models import load_causal_lm
    return load_causal_lm(default_finetuned_lm())


@pytest.fixture(scope="module")
def topic_run(tmp_path_factory, tuned_lm):
    """One CLI comparison of the bundled fine-tuned LM: fp32, int8 and int3 weight-only on 100 held-out prompts."""
    out = tmp_path_factory.mktemp("prompted") / "report"
    rc = main(["lm", "compare", "--recipes", "int8,int3-g64", "--examples", str(N_PROMPTS), "--batch-sizes", "1",
               "--decode-steps", "4", "--out", str(out)])
    assert rc == 0
    return out, json.loads((out / "comparison.json").read_text())


def test_the_fine_tuned_model_is_proven_on_its_task(topic_run):
    out, d = topic_run
    assert d["task"]["kind"] == "prompted" and d["task"]["primary"] == "exact_match"
    base = d["baseline"]["exact_match"]
    assert 0.6 <= base <= 0.99, base            # fine-tuned well, with room left to see quantization hurt
    int8, int3 = (next(c for c in d["candidates"] if c["name"] == n) for n in ("int8", "int3-g64"))
    m = int8["metrics"]["exact_match"]
    assert abs(m["delta"]) <= 0.01 + 1e-9 and m["ci_low"] >= -0.03 and m["ci_low"] <= m["delta"] <= m["ci_high"]      # int8 moves at most 1 of 100 answers
    assert int3["n_changed"] > int8["n_changed"]                          # 3 bits moves more answers than 8
    for c in (int8, int3):                                                # every slice value, with its interval
        assert {r["value"] for r in c["slices"]["topic"]} == {"business", "entertainment", "politics", "sports", "tech"}
        assert len(c["slices"]["length"]) == 3 and sum(r["n"] for r in c["slices"]["length"]) == N_PROMPTS
        r = c["slices"]["topic"][0]["exact_match"]
        assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    e = int3["changed"][0]
    assert e["baseline"] != e["candidate"] and e["reference"] and e["prompt"].endswith("Topic:")
    assert e["right"] in ("baseline", "candidate", "neither")
    for k in ("reference_perplexity", "token_f1"):
        assert k in int3["metrics"]
    assert int3["mean_kl"] > int8["mean_kl"] > 0 and 0 < int3["same_top"] <= 1
    assert d["candidates"][0]["perf"]["batch_sizes"]["1"]["p50_ms"] > 0


def test_the_gate_judges_an_lm_on_its_task_metric(topic_run):
    out, d = topic_run
    assert main(["gate", str(out), "--candidate", "int8", "--max-drop", "5"]) == 0
    drop = -100 * next(c for c in d["candidates"] if c["name"] == "int3-g64")["metrics"]["exact_match"]["ci_low"]
    # int3's exact-match interval reaches below -drop points: a budget below its lower end cannot pass strictly
    assert main(["gate", str(out), "--candidate", "int3-g64", "--max-drop", f"{max(drop - 0.5, 0):.2f}",
                 "--strict"]) == 1


@pytest.mark.skipif(chromium() is None, reason="Chromium is installed by `make test` (Debian package chromium)")
def test_the_lm_report_shows_slices_and_changed_answers(topic_run, tmp_path):
    out, d = topic_run
    dom, console = load(out / "report.html", screenshot=tmp_path / "lm.png")
    assert console == [] and 'data-ready="yes"' in dom
    assert "Exact match change per slice" in dom and "by topic" in dom and "by length" in dom
    assert "Changed answers" in dom and "baseline answer" in dom and "reference" in dom
    changed = d["candidates"][1]["changed"][0]
    assert changed["candidate"] in dom or changed["candidate"] == ""
    assert dom.count("class=\"slice-table\"") + dom.count("class=slice-table") >= 2


def test_each_model_has_its_own_memory_and_bits_per_parameter(topic_run):
    """Not the process's peak (every model of the comparison is loaded in it): the model's weights plus
    the working memory its evaluation added. And the tied embedding, a fifth of the model, is named."""
    out, d = topic_run
    base = d["baseline"]
    models = [base] + d["candidates"]
    for c in models:
        p = c["perf"]
        assert c["weight_bytes"] / 2**20 <= p["memory_mb"] < p["peak_rss_mb"], c["name"]
    assert all(c["perf"]["memory_mb"] < base["perf"]["memory_mb"] for c in d["candidates"])
    assert base["footprint"]["bits_per_param"] == pytest.approx(32, abs=0.01)
    int8, int3 = d["candidates"]
    assert 8 < int8["footprint"]["quantized_bits_per_weight"] < 8.2            # + an fp16 scale per row
    assert int3["footprint"]["quantized_bits_per_weight"] == pytest.approx(3.25)
    assert int3["footprint"]["bits_per_param"] < int8["footprint"]["bits_per_param"] < 32
    note = next(w for w in d["warnings"] if w["code"] == "float-layers" and w["candidate"] == "int3-g64")
    assert "28.3M parameters (21.0% of the model)" in note["message"] and "-head8" in note["remedy"]
    assert "expected for tiny heads" not in note["remedy"]


@pytest.mark.skipif(chromium() is None, reason="Chromium is installed by `make test` (Debian package chromium)")
def test_the_lm_report_fits_the_page(topic_run):
    from test_report_readability import layout
    out, d = topic_run
    got = layout(out / "report.html")
    assert got["scroll"] <= got["inner"] and max(got["tables"].values()) <= got["body"] + 1
    assert got["labels"] >= 3 and got["overlaps"] == 0


def test_multiple_choice_is_scored_by_log_likelihood(tuned_lm, tmp_path, bbc):
    from quantgate.compare import Settings, compare
    from quantgate.recipes import WeightOnly
    from quantgate.tasks.prompted import bbc_topic_prompts, load_prompts
    ps = bbc_topic_prompts(bbc["test"]).head(24)
    topics = sorted(set(ps.references))
    rows = [{"q": p, "a": r, "options": topics, "src": "bbc"} for p, r in zip(ps.prompts, ps.references)]
    f = tmp_path / "mc.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_prompts(f, "q", "a", "options", ["src"])
    comp = compare(tuned_lm, data, [WeightOnly(bits=8)], None,
                   Settings(batch_sizes=(1,), decode_steps=2, decode_rounds=1, n_boot=300, verbose=False)).to_dict()
    assert comp["task"]["primary"] == "choice_accuracy" and "log-likelihood" in comp["data"]["answers"]
    assert comp["baseline"]["choice_accuracy"] >= 0.6                      # the model knows its topics
    c = comp["candidates"][0]
    assert abs(c["metrics"]["choice_accuracy"]["delta"]) <= 0.05
    assert all(e["candidate"] in topics for e in c["changed"])


@pytest.mark.parametrize("rows,cols,message", [
    ([{"q": "x", "a": "y"}], ("question", "a", None), "has no column 'question' (named by --prompt-col); its columns are: q, a"),
    ([{"q": "x", "a": " "}], ("q", "a", None), "has an empty reference"),
    ([{"q": "x", "a": "y", "c": "y"}], ("q", "a", "c"), "must be a list of at least two non-empty strings"),
    ([{"q": "x", "a": "y", "c": ["u", "v"]}], ("q", "a", "c"), "the reference 'y' is not one of its choices"),
])
def test_bad_prompted_task_files(tmp_path, rows, cols, message):
    from quantgate.tasks.prompted import load_prompts
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(QuantgateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prompts(f, *cols)


def _synthetic(drop_rare: bool):
    """A comparison whose candidate loses 25 of the 60 examples of one rare slice value
    (or none) and gains 15 elsewhere: overall change small, its interval crossing zero."""
    from quantgate.compare import Candidate, Comparison
    from quantgate.evaluate import metrics
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.integers(0, 4, n)
    pb = y.copy()
    pb[rng.choice(n, 100, replace=False)] = (y[:100] + 1) % 4
    pc = pb.copy()
    rare = np.zeros(n, bool)
    rare[:60] = True
    right = np.flatnonzero(rare & (pb == y))
    if drop_rare:
        pc[right[:25]] = (y[right[:25]] + 1) % 4
    wrong = np.flatnonzero(~rare & (pb != y))
    pc[wrong[:15]] = y[wrong[:15]]
    slices = {"source": ["rare" if r else "common" for r in rare]}
    cand = Candidate(name="int4", recipe={}, kernel="k", quantized_layers=[], float_layers={}, float_ops={}, notes=[],
                     quantize_seconds=0.0, calibration=None, weight_bytes=1,
                     metrics=metrics.paired_bootstrap(y, pb, pc, 2000, 0), mcnemar=metrics.mcnemar(y, pb, pc),
                     slices=metrics.slice_deltas(y, pb, pc, slices, 2000, 0), agreement=float((pb == pc).mean()),
                     mean_kl=0.0, changed=[], n_changed=int((pb != pc).sum()),
                     perf={"batch_sizes": {"1": {"p50_ms": 1.0, "p95_ms": 1.1, "p99_ms": 1.2, "throughput_per_s": 1000}}})
    base = {"name": "fp32", "accuracy": float((pb == y).mean()), "macro_f1": 0.0, "weight_bytes": 4,
            "perf": {"batch_sizes": {"1": {"p50_ms": 2.0, "p95_ms": 2.1, "p99_ms": 2.2, "throughput_per_s": 500}}}}
    return Comparison(model={"path": "m", "sha": "s", "task": "sequence-classification"},
                      data={"source": "synthetic", "n": n, "slices": {"source": ["common", "rare"]}}, settings={},
                      baseline=base, candidates=[cand])


def test_a_slice_that_drops_while_the_average_holds_is_named():
    from quantgate.diagnose import diagnose
    from quantgate.report import table
    comp = _synthetic(drop_rare=True)
    overall = comp.candidates[0].metrics["accuracy"]
    assert overall["ci_low"] < 0 < overall["ci_high"]                   # the average holds
    comp.warnings = diagnose(comp)
    drops = [w for w in comp.warnings if w["code"] == "slice-drop"]
    assert len(drops) == 1 and "source=rare (n=60) drops 41.67 points" in drops[0]["message"] and "Holm" in drops[0]["message"]
    out = table(comp.to_dict())
    assert "source=rare (n=60) -41.67" in out                           # the worst slice, in the table itself
    assert "accuracy on source=rare (n=60) drops 41.67 points" in out     # and the warning under it
    control = _synthetic(drop_rare=False)
    assert not [w for w in diagnose(control) if w["code"] == "slice-drop"]


def test_chat_template_is_applied_only_when_asked(tuned_lm, bbc, monkeypatch):
    from quantgate.compare import Settings
    from quantgate.tasks.prompted import PromptedTask, bbc_topic_prompts
    ps = bbc_topic_prompts(bbc["test"]).head(3)
    plain = PromptedTask(tuned_lm, ps, Settings())
    chat = PromptedTask(tuned_lm, ps, Settings(chat_template=True))
    assert plain.texts == ps.prompts and all(ps.prompts[i] in t and t != ps.prompts[i] for i, t in enumerate(chat.texts))
    assert chat.describe()["data"]["chat_template"] and not plain.describe()["data"]["chat_template"]
    monkeypatch.setattr(tuned_lm.tokenizer, "chat_template", None)
    with pytest.raises(QuantgateError, match="--chat-template was given, but this model's tokenizer has no chat template"):
        PromptedTask(tuned_lm, ps, Settings(chat_template=True))


def test_prompts_longer_than_the_context_are_cut_from_the_left_and_counted(tuned_lm):
    from quantgate.compare import Settings
    from quantgate.tasks.prompted import PromptSet, PromptedTask
    limit = tuned_lm.module.config.max_position_embeddings
    long = "word " * (limit + 100) + "Topic:"
    t = PromptedTask(tuned_lm, PromptSet([long, "Article: short\nTopic:"], ["tech", "sports"], ["a", "b"]), Settings())
    assert t.truncated == 1 and len(t.prompts[0]) < limit and t.prompts[1] == tuned_lm.tokenizer(t.texts[1])["input_ids"]


def test_any_causal_lm_family_runs_the_same_comparison(tmp_path):
    """A GPT-2 (not a Llama: no quantgate decoder) with the bundled tokenizer: the same prompted
    comparison runs, on transformers' generate, and the report says which runtime ran."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from quantgate.compare import Settings, compare
    from quantgate.models import default_lm_dir, load_causal_lm
    from quantgate.recipes import WeightOnly
    from quantgate.tasks.prompted import PromptSet
    tok = AutoTokenizer.from_pretrained(default_lm_dir())
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=2,
                               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path / "g")
    tok.save_pretrained(tmp_path / "g")
    lm = load_causal_lm(tmp_path / "g")
    ps = PromptSet([f"Article: {w}\nTopic:" for w in "abcdef"], ["tech", "sports"] * 3, list("123456"))
    d = compare(lm, ps, [WeightOnly(bits=8)], None,
                Settings(batch_sizes=(1,), decode_steps=2, decode_rounds=1, n_boot=100, verbose=False)).to_dict()
    assert d["baseline"]["perf"]["runtime"] == d["candidates"][0]["perf"]["runtime"] == "transformers generate"
    assert d["task"]["primary"] == "exact_match" and len(d["candidates"][0]["slices"]["length"]) >= 1


def test_a_candidate_significantly_better_than_fp32_gets_a_note():
    from quantgate.diagnose import diagnose
    from quantgate.evaluate import metrics
    comp = _synthetic(drop_rare=False)
    c = comp.candidates[0]
    c.metrics = metrics.paired_bootstrap(*_better_arrays(), 2000, 0)
    notes = [w for w in diagnose(comp) if w["code"] == "better-than-baseline"]
    assert len(notes) == 1 and notes[0]["severity"] == "info" and "noise" in notes[0]["message"]
    assert not [w for w in diagnose(_synthetic(drop_rare=True)) if w["code"] == "better-than-baseline"]


def _better_arrays():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 1000)
    pb = y.copy()
    wrong = rng.choice(1000, 100, replace=False)
    pb[wrong] = (y[wrong] + 1) % 4
    pc = pb.copy()
    pc[wrong[:40]] = y[wrong[:40]]          # the candidate fixes 40 of the baseline's 100 errors
    return y, pb, pc
