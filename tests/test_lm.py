"""Causal LMs on the bundled SmolLM2-135M-Instruct: GPTQ, round-to-nearest,
NF4, QLoRA, the packed storage, the LM comparison and its errors. Kept small:
one GPTQ run on a little calibration text, short windows and prompts."""

import json
import math

import pytest
import torch

from quantgate.errors import QuantgateError
from quantgate.recipes import GPTQ, NF4, QLoRA, Recipe, WeightOnly


@pytest.fixture(scope="session")
def lm():
    from quantgate.models import load_causal_lm
    return load_causal_lm()


@pytest.fixture(scope="session")
def held_out(lm, bbc):
    from quantgate.tasks.causal_lm import eval_windows
    return eval_windows(lm.tokenizer, bbc["test"].texts, 256, max_windows=4)


def ppl(module, windows):
    from quantgate.tasks.causal_lm import score_windows
    return math.exp(score_windows(module, windows, verbose=False).nll.mean())


# Blocks 10-29 stay in float in the GPTQ test (and its RTN reference), to keep the suite fast:
# every block still runs in the sequential pass, only the first ten are quantized.
FIRST_TEN = ("model.layers.1?.*", "model.layers.2?.*")


@pytest.fixture(scope="session")
def gptq3(lm, bbc):
    from quantgate.quantize import quantize
    return quantize(lm, GPTQ(bits=3, group_size=128, num_samples=16, seq_len=256, exclude=FIRST_TEN), bbc["train"])


def test_default_lm_is_converted_from_the_packaged_gguf(lm):
    cfg = lm.module.config
    assert type(lm.module).__name__ == "LlamaForCausalLM" and cfg.hidden_size == 576
    assert getattr(cfg, "quantization_config", None) is None          # a plain fp32 directory
    assert lm.module.lm_head.weight.data_ptr() == lm.module.model.embed_tokens.weight.data_ptr()
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    out = lm.module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert "Paris" in lm.tokenizer.decode(out[0, ids.shape[1]:])


def test_gptq_at_3_bits_beats_round_to_nearest_on_held_out_text(lm, gptq3, held_out):
    from quantgate.quantize import quantize
    rtn = quantize(lm, WeightOnly(bits=3, group_size=128, exclude=FIRST_TEN))
    p_fp, p_rtn, p_gptq = ppl(lm.module, held_out), ppl(rtn.module, held_out), ppl(gptq3.module, held_out)
    assert p_fp < p_gptq < p_rtn
    assert (p_rtn - p_gptq) / (p_rtn - p_fp) > 0.3        # closes a good part of RTN's gap
    # 576-wide layers at group size 128: a shorter last group, and the int4 kernel still runs (zero-padded)
    q = gptq3.module.model.layers[0].self_attn.q_proj
    assert q.scales.shape == (576, 5) and q.packed_kernel
    assert gptq3.float_layers["lm_head"].startswith("output head tied")
    assert len(gptq3.quantized_layers) == 70 and gptq3.name == "gptq-int3-g128+float2"
    assert gptq3.calibration["count"] == 16 and gptq3.calibration["tokens"] == 16 * 256


def test_kl_from_kept_summaries_bounds_the_full_kl_from_below_and_closely(lm, held_out):
    """A candidate is scored against the baseline's kept top tokens (evaluate/next_token.py), never
    the baseline's full distributions: its perplexity and top-token agreement are the full
    computation's, and its KL is a lower bound within the baseline's mass outside those tokens."""
    from quantgate.quantize import quantize
    from quantgate.tasks.causal_lm import score_windows
    w = held_out[:2]
    cand = quantize(lm, WeightOnly(bits=3, group_size=128)).module
    base = score_windows(lm.module, w, verbose=False)
    got = score_windows(cand, w, verbose=False, base=base)
    assert 0 < base.rest_mass < 0.1 and len(base.positions) == 2 and base.positions[0].idx.shape[1] == 1024
    with torch.inference_mode():
        for i in range(2):
            b = torch.log_softmax(lm.module(input_ids=w[i:i + 1]).logits[0, :-1].float(), -1)
            c = torch.log_softmax(cand(input_ids=w[i:i + 1]).logits[0, :-1].float(), -1)
            full = float((b.exp() * (b - c)).sum(-1).mean())
            assert full * 0.9 < got.kl[i] <= full + 1e-4
            assert got.nll[i] == pytest.approx(-float(c.gather(-1, w[i, 1:, None]).mean()), abs=1e-4)
            assert got.same_top[i] == pytest.approx(float((b.argmax(-1) == c.argmax(-1)).float().mean()), abs=1e-6)
    assert score_windows(lm.module, w, verbose=False, base=base).kl.max() < 1e-6    # the baseline against itself


def test_gptq_column_update_reduces_layer_output_error():
    """GPTQ's roundings keep W X; act-order helps further. (A property of the algorithm, on real-like data.)"""
    from quantgate.formats.affine import dequantize, quantize
    from quantgate.methods.gptq import gptq_weight, hessian
    from quantgate.methods.weight_only import rtn_qparams
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 320, generator=g) * 0.05
    x = (torch.randn(2048, 32, generator=g) @ torch.randn(32, 320, generator=g)
         + 0.3 * torch.randn(2048, 320, generator=g)) * torch.rand(320, generator=g) * 3
    err = lambda wq: ((x @ (w - wq).T).norm() / (x @ w.T).norm()).item()
    qp = rtn_qparams(w, 4, 64, True)
    e_rtn = err(dequantize(quantize(w, qp), qp))
    q, qp = gptq_weight(w, hessian(x), 4, 64, act_order=False)
    e_plain = err(dequantize(q, qp))
    q, qp = gptq_weight(w, hessian(x), 4, 64, act_order=True)
    e_act = err(dequantize(q, qp))
    assert e_act < e_plain < 0.5 * e_rtn
    assert q.min() >= -8 and q.max() <= 7 and qp.scale.shape == (128, 5)
    # the per-layer error GPTQ reports is computed from the Hessian alone: the same number
    from quantgate.methods.gptq import output_error
    assert output_error(w, dequantize(q, qp), hessian(x)) == pytest.approx(e_act, rel=1e-3)


def test_gptq_scale_search_lowers_the_output_error_of_a_real_layer(lm):
    """Shrinking each group's range where that rounds its weights better pays on SmolLM2's weights
    (their outliers), at 3 bits most; measured on a whole model: ~7% lower layer errors at 4 bits, ~15% at 3."""
    from quantgate.formats.affine import dequantize
    from quantgate.methods.gptq import gptq_weight, hessian, output_error
    w = lm.module.model.layers[3].mlp.up_proj.weight.detach()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2048, 32, generator=g) @ torch.randn(32, 576, generator=g)
         + 0.3 * torch.randn(2048, 576, generator=g)) * torch.rand(576, generator=g) * 3
    h = hessian(x)
    for bits, most in ((4, 0.99), (3, 0.96)):
        plain, searched = (output_error(w, dequantize(*gptq_weight(w, h, bits, 64, act_order=True, scale_search=s)), h)
                           for s in (False, True))
        assert searched < most * plain, (bits, plain, searched)


def test_round_to_nearest_scale_search_rounds_every_group_as_well_and_the_model_better(lm, held_out):
    """int<b>-g<N>-search: each group's range is shrunk where that rounds its weights better.
    Min-max is one of the candidates, so no group may round worse; on SmolLM2 the whole model gains."""
    from quantgate.formats.affine import dequantize, grouped, quantize
    from quantgate.methods.weight_only import rtn_qparams
    from quantgate.quantize import quantize as quantize_model
    for w in (lm.module.model.layers[3].self_attn.q_proj.weight, lm.module.model.layers[3].mlp.down_proj.weight):
        w = w.detach()                              # 576 wide (a last group of 64 at g128) and 1536 wide
        errs = []
        for search in (False, True):
            qp = rtn_qparams(w, 3, 128, True, search)
            errs.append(grouped((dequantize(quantize(w, qp), qp) - w).square(), 128).sum(-1))   # [N, groups]
        assert bool((errs[1] <= errs[0]).all()) and errs[1].sum() < 0.9 * errs[0].sum()
    plain, searched = (ppl(quantize_model(lm, WeightOnly(bits=3, group_size=128, scale_search=s)).module, held_out)
                       for s in (False, True))
    assert searched < 0.8 * plain, (plain, searched)


@pytest.mark.parametrize("bits", [3, 4])   # 2 and 8 share the code paths; packing of each width: test_formats
def test_saved_artifact_reloads_bit_identical_and_generates(lm, tmp_path, bits):
    from quantgate.artifact import load_lm, save
    from quantgate.quantize import quantize
    q = quantize(lm, WeightOnly(bits=bits, group_size=64, symmetric=False))
    save(q, lm, tmp_path / "a")
    back = load_lm(tmp_path / "a")
    ids = lm.tokenizer("Shares in the bank rose after", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(q.module(input_ids=ids).logits, back.module(input_ids=ids).logits)
        one = ids[:, :1]                      # one row: the packed-kernel path
        assert torch.equal(q.module(input_ids=one).logits, back.module(input_ids=one).logits)
    g1 = q.module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    g2 = back.module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["base_model"]["sha"] == lm.sha and len(m["layers"]) == 210


def test_int4_group64_file_stays_under_4_3_bits_per_weight(lm, tmp_path):
    from safetensors import safe_open

    from quantgate.artifact import save
    from quantgate.quantize import quantize
    q = quantize(lm, WeightOnly(bits=4, group_size=64))
    save(q, lm, tmp_path / "a")
    layers = json.loads((tmp_path / "a" / "manifest.json").read_text())["layers"]
    n_weights = sum(s["in"] * s["out"] for s in layers.values())
    nbytes = 0
    with safe_open(str(tmp_path / "a" / "weights.safetensors"), "pt") as f:
        for k in f.keys():
            if k.rpartition(".")[0] in layers:
                t = f.get_tensor(k)
                nbytes += t.numel() * t.element_size()
    assert 8 * nbytes / n_weights == pytest.approx(4.25) and 8 * nbytes / n_weights <= 4.3


def test_nf4_double_quant_storage_and_round_trip(lm, tmp_path, held_out):
    from quantgate.artifact import load_lm, save
    from quantgate.methods.nf4 import NF4Linear
    from quantgate.quantize import quantize
    q = quantize(lm, NF4())
    layer = q.module.model.layers[0].mlp.down_proj
    assert isinstance(layer, NF4Linear)
    bits = 8 * sum(b.numel() * b.element_size() for b in layer.buffers()) / (layer.in_features * layer.out_features)
    assert bits == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=0.01)   # vs 4.5 without double quantization
    w = lm.module.model.layers[0].mlp.down_proj.weight
    assert ((layer.weight - w).norm() / w.norm()) < 0.12
    assert ppl(q.module, held_out[:2]) < 1.3 * ppl(lm.module, held_out[:2])
    save(q, lm, tmp_path / "n")
    back = load_lm(tmp_path / "n")
    ids = held_out[:1, :32]
    with torch.inference_mode():
        every_call = q.module(input_ids=ids).logits
        assert torch.equal(every_call, back.module(input_ids=ids).logits)
        # scoring's path: each layer dequantizes once and keeps it, outputs bit for bit the same
        from quantgate.methods.nf4 import NF4_HELD, NF4_KERNEL, dequantized_once
        layers = [m for m in q.module.modules() if isinstance(m, NF4Linear)]
        layer.calls.clear()
        with dequantized_once(q.module) as n:
            assert n == len(layers) == 30 * 7
            assert torch.equal(q.module(input_ids=ids).logits, every_call)
            first = layer.held[torch.float32]
            assert torch.equal(q.module(input_ids=ids).logits, every_call)
            assert layer.held[torch.float32] is first                     # not dequantized again
        assert layer.held is None and layer.calls == {NF4_HELD: 2}       # let go on leaving; both calls counted
        q.module(input_ids=ids)
        assert layer.calls[NF4_KERNEL] == 1


def test_qlora_trains_adapters_on_a_frozen_nf4_base(lm, bbc, tmp_path):
    from quantgate.artifact import load_lm, save
    from quantgate.methods.nf4 import NF4Linear
    from quantgate.quantize import quantize
    from quantgate.calibration import lm_windows
    r = QLoRA(rank=4, alpha=8, steps=8, batch_size=2, seq_len=64, lr=1e-3, targets=("q_proj", "v_proj"))
    base_q = lm.module.model.layers[3].self_attn.q_proj.weight.detach().clone()
    q = quantize(lm, r, train=bbc["train"])
    losses = q.extra["training"]["losses"]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert torch.equal(lm.module.model.layers[3].self_attn.q_proj.weight, base_q)      # the user's model untouched
    layer = q.module.model.layers[3].self_attn.q_proj
    assert isinstance(layer.base_layer, NF4Linear) and not any(p.requires_grad for p in layer.base_layer.parameters())
    # loss on the training windows went down against the untrained NF4 base
    win = lm_windows(lm.tokenizer, bbc["train"].texts, 16, 64)[0]
    with torch.inference_mode():
        after = q.module(input_ids=win[:4], labels=win[:4]).loss.item()
        nf4 = quantize(lm, NF4()).module
        before = nf4(input_ids=win[:4], labels=win[:4]).loss.item()
    assert after < before
    save(q, lm, tmp_path / "qlora")
    assert (tmp_path / "qlora" / "adapters.safetensors").is_file()
    back = load_lm(tmp_path / "qlora")
    with torch.inference_mode():
        assert torch.equal(q.module(input_ids=win[:1]).logits, back.module(input_ids=win[:1]).logits)
    # merged: the adapters folded into float weights give the same outputs
    from quantgate.methods.qlora import merge
    import copy
    merged = merge(copy.deepcopy(q.module))
    with torch.inference_mode():
        a, b = q.module(input_ids=win[:1]).logits, merged(input_ids=win[:1]).logits
    assert (a - b).abs().max() < 1e-3


def test_lm_errors_are_clear(lm, bbc):
    from quantgate.data import Dataset
    from quantgate.methods.gptq import check_memory
    from quantgate.quantize import quantize
    from quantgate.calibration import lm_windows
    with pytest.raises(QuantgateError, match="bits must be one of 2, 3, 4, 8, got 5"):
        Recipe.parse("gptq-int5-g128")
    with pytest.raises(QuantgateError, match="calibration data is empty"):
        quantize(lm, GPTQ(), Dataset([], [], []))
    short = bbc["train"].head(3)
    with pytest.raises(QuantgateError, match=r"too short: 3 texts give [\d,]+ tokens, but 128 samples x 512 tokens need 65,536"):
        quantize(lm, GPTQ(), short)
    w = lm_windows(lm.tokenizer, bbc["train"].texts, 128, 512)[0]
    with pytest.raises(QuantgateError, match=r"GPTQ would need about \d+\.\d\d GB of memory at its peak but 1\.00 GB is available"):
        check_memory(lm.module, w, available=2**30)
    with pytest.raises(QuantgateError, match="is for causal language models"):
        from quantgate.models import Model
        quantize(Model(torch.nn.Linear(2, 2), None, ["a"]), NF4())


def test_gptq_on_a_gpu_needs_the_states_and_one_block_not_the_model():
    """gpu_bytes, the estimate a GPU run is checked against before it starts, on Llama-2-7B's shapes
    (the meta device: no weights, no GPU needed) at 128 x 2048 tokens, 2 windows per block forward:
    the hidden states in and out of a block and one block, well under the fp32 model; all 128 at
    once, far more (the block's work on 262,144 tokens); bf16 states, less."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from quantgate.methods.gptq import gpu_bytes
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000)
    with torch.device("meta"):
        m = LlamaForCausalLM(cfg)
    w = torch.empty(128, 2048, device="meta")
    states = 2 * 128 * 2048 * 4096 * 4
    block = sum(p.numel() for p in m.model.layers[0].parameters()) * 4
    two = gpu_bytes(m, w, 2)
    assert states + 2 * block < two < sum(p.numel() for p in m.parameters()) * 4 / 2
    assert gpu_bytes(m, w, 1) < two < gpu_bytes(m, w) / 4 and gpu_bytes(m, w, 2, states="bf16") < two


def test_lm_cli_quantize_and_generate(tmp_path, capsys, lm):
    from quantgate.cli import main
    assert main(["lm", "quantize", "--recipes", "gptq-int5-g128", "--out", str(tmp_path / "x")]) == 2
    assert "bits must be one of 2, 3, 4, 8, got 5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main(["lm", "quantize", "--recipes", "int8", "--out", str(tmp_path / "a")]) == 0
    assert main(["lm", "generate", "--model", str(tmp_path / "a"), "--prompt", "The capital of France is",
                 "--new-tokens", "4"]) == 0
    out = capsys.readouterr()
    assert "Paris" in out.out and "aten._weight_int8pack_mm" in out.err


def test_lm_artifacts_are_versioned_in_the_registry(lm, gptq3, tmp_path):
    from quantgate.artifact import load_lm
    from quantgate.registry import Registry
    reg = Registry(tmp_path / "reg")
    row = reg.register(gptq3, lm, base="smollm2")
    assert row["version"] == "smollm2-gptq-int3-g128-float2-v1" and not row["existing"]
    assert row["calibration"]["hash"] == gptq3.calibration["hash"] and row["base_sha"] == lm.sha
    assert reg.register(gptq3, lm, base="smollm2")["existing"]          # same content: same version
    back = load_lm(row["path"])
    ids = lm.tokenizer("Shares rose", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(back.module(input_ids=ids).logits, gptq3.module(input_ids=ids).logits)


def test_gate_judges_a_language_model_on_its_perplexity_rise():
    from quantgate.gate import Budget, gate
    from quantgate.tasks.causal_lm import LanguageModelling
    comp = {"model": {"task": "causal-lm"}, "data": {"n": 40}, "baseline": {"weight_bytes": 1},
            "task": {"kind": "language-modelling", "primary": "perplexity", "metrics": LanguageModelling.metrics},
            "candidates": [{"name": "gptq", "metrics": {"perplexity": {"baseline": 25.0, "candidate": 26.0, "delta": 1.0,
                                                                       "ci_low": 0.5, "ci_high": 1.5}},
                            "slices": {}, "perf": {"batch_sizes": {}}, "weight_bytes": 1}]}
    ok = gate(comp, Budget(max_drop=10, metric="perplexity")).results[0]
    assert ok["passed"] and ok["constraints"][0]["detail"] == "rise 4.00 %, at most 6.00 at 95%, within 10"
    bad = gate(comp, Budget(max_drop=1, metric="perplexity")).results[0]
    assert not bad["passed"] and "rise 4.00 %, at least 2.00 at 95%, over 1" in bad["constraints"][0]["detail"]
    assert gate(comp, Budget(max_drop=10)).results[0]["passed"]              # the task's primary metric by default
    with pytest.raises(QuantgateError, match="has no metric 'accuracy'; it has: perplexity"):
        gate(comp, Budget(max_drop=1, metric="accuracy"))


def test_lm_comparison_reports_what_changed(tmp_path, capsys, lm, monkeypatch):
    """`quantgate lm compare` end to end: perplexity with its interval, KL,
    agreement, the changed generations, decode percentiles, kernels, reports;
    with --one-at-a-time: the candidate waits on disk once scored, and every model
    is timed loaded in turn in rounds that add up to the usual timing; NF4's
    quality scored on weights dequantized once, and the report says so."""
    from quantgate.compare import TURN_ROUNDS
    from quantgate.methods.nf4 import NF4_HELD
    from quantgate.cli import main
    from quantgate.methods.weight_only import DEQUANT, INT4_KERNEL, ROWS_ENV
    monkeypatch.setenv(ROWS_ENV, "16")          # fixed, so that both kernels run whatever this CPU measures
    rc = main(["lm", "compare", "--model", lm.path, "--recipes", "int3-g64,nf4", "--context", "128", "--windows", "3", "--prompts", "3",
               "--new-tokens", "12", "--batch-sizes", "1,2", "--decode-steps", "4", "--one-at-a-time", "--out", str(tmp_path / "r")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "perplexity on 3 windows of 128 tokens" in out and "int3-g64" in out
    assert "runtime: quantgate decoder" in out
    d = json.loads((tmp_path / "r" / "comparison.json").read_text())
    assert d["model"]["task"] == "causal-lm" and d["data"]["source"].startswith("BBC News test split")
    c = d["candidates"][0]
    p = c["metrics"]["perplexity"]
    assert p["candidate"] > p["baseline"] > 1 and p["ci_low"] <= p["delta"] <= p["ci_high"]
    assert c["mean_kl"] > 0 and 0 < c["agreement"] < 1
    assert c["n_changed"] == len(c["changed"]) >= 1          # 3-bit changes some greedy continuation
    e = c["changed"][0]
    assert e["baseline"] != e["candidate"] and e["first_diff"] >= 0 and e["prompt"]
    calls = c["extra"]["kernel_calls"]
    assert calls[INT4_KERNEL] > 0 and calls[DEQUANT] > 0   # decode steps packed, 128-token windows dequantized
    b1 = c["perf"]["batch_sizes"]["1"]
    assert b1["p50_ms"] <= b1["p95_ms"] <= b1["p99_ms"] and b1["ttft_ms"] > 0 and b1["tokens_per_s"] > 0
    assert b1["n"] == d["baseline"]["perf"]["batch_sizes"]["1"]["n"] and b1["n"] % TURN_ROUNDS == 0
    assert "samples_ms" not in b1 and c["perf"]["memory_mb"] > 0
    assert d["environment"]["memory_plan"]["hold"] == "one at a time"
    assert "one at a time, each loaded in turn" in d["environment"]["timing"]["held"]
    assert c["weight_bytes"] < 0.6 * d["baseline"]["weight_bytes"]
    html = (tmp_path / "r" / "report.html").read_text()
    assert "Changed generations" in html and "weights against perplexity" in html and INT4_KERNEL in html
    assert "one at a time, each loaded in turn" in html
    assert html.count("<svg") >= 2
    nf4 = d["candidates"][1]
    assert set(nf4["extra"]["kernel_calls"]) == {NF4_HELD} and nf4["extra"]["scored_with"] == "NF4 weights dequantized once"
    assert "quality scored with the weights of its 210 NF4 layers dequantized once" in html
    assert nf4["perf"]["batch_sizes"]["1"]["tokens_per_s"] > 0       # timed on the real path


def test_decoder_runs_the_same_model_as_transformers(lm):
    """quantgate's decode loop (preallocated cache, fused q|k|v and gate|up
    kernel calls) is the same model: fp32 greedy tokens equal transformers';
    int4 logits differ from transformers' cached steps no more than
    transformers' own cached and uncached paths differ from each other (bf16
    activations into the kernel; a greedy path may branch where two tokens tie
    that closely, as it does between transformers' two paths)."""
    from quantgate.decoder import Decoder
    from quantgate.methods.weight_only import INT4_KERNEL
    from quantgate.quantize import quantize
    from quantgate.tasks.causal_lm import greedy, runtime
    tok = lm.tokenizer
    prompts = ["The BBC reported today that the government", "Shares in the company rose"]
    assert greedy(lm.module, tok, prompts, 10, "quantgate") == greedy(lm.module, tok, prompts, 10, "transformers")
    q = quantize(lm, WeightOnly(bits=4, group_size=64)).module
    ids = tok(prompts[1], return_tensors="pt")["input_ids"]
    cont = torch.tensor([greedy(q, tok, prompts[1:], 8, "transformers")[0]])
    attn = q.model.layers[0].self_attn
    for m in (attn.q_proj, attn.k_proj, attn.v_proj):
        m.calls.clear()
    dec = Decoder(q)
    ours = [dec.prefill(ids, 20)] + [dec.step(cont[:, i:i + 1]) for i in range(7)]
    # the prefill (5 rows) and each step made one fused call, counted on each projection
    assert [m.calls[INT4_KERNEL] for m in (attn.q_proj, attn.k_proj, attn.v_proj)] == [8, 8, 8]
    with torch.inference_mode():
        out = q(input_ids=ids, use_cache=True)
        theirs = [out.logits[:, -1]]
        for i in range(7):
            out = q(input_ids=cont[:, i:i + 1], past_key_values=out.past_key_values, use_cache=True)
            theirs.append(out.logits[:, -1])
        full = q(input_ids=torch.cat([ids, cont[:, :7]], 1)).logits[:, ids.shape[1] - 1:]
    ours_vs_cached = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    # transformers' own uncached and cached paths differ by this much (bf16 activations into the int4 kernel)
    full_vs_cached = max(float((full[:, i] - b).abs().max()) for i, b in enumerate(theirs))
    assert ours_vs_cached < 0.5 and ours_vs_cached < 2 * full_vs_cached, (ours_vs_cached, full_vs_cached)
    assert runtime(torch.nn.Linear(2, 2)) == "transformers generate"
    with pytest.raises(QuantgateError, match="the quantgate decoder cannot run this model: model type None is not one of"):
        runtime(torch.nn.Linear(2, 2), "quantgate")


def test_int8_copy_of_the_tied_head(lm, held_out, tmp_path):
    """head_bits=8 stores the tied output head as an untied int8 copy (the
    embedding stays float for lookups): perplexity as with the float head, and
    the head's decode-time matmul takes the packed int8 kernel."""
    from quantgate.artifact import load_lm, save
    from quantgate.methods.weight_only import INT8_KERNEL, WeightOnlyLinear
    from quantgate.quantize import quantize
    from quantgate.tasks.causal_lm import greedy
    r = Recipe.parse("int4-g64-head8")
    assert r == WeightOnly(bits=4, group_size=64, head_bits=8) and r.name == "int4-g64-head8"
    assert Recipe.parse("gptq-int4-g128-head8").head_bits == 8
    with pytest.raises(QuantgateError, match="head_bits must be one of None, 4, 8, got 3"):
        WeightOnly(bits=4, group_size=64, head_bits=3)
    plain, q = quantize(lm, WeightOnly(bits=4, group_size=64)), quantize(lm, r)
    assert "lm_head" in plain.float_layers and "lm_head" in q.quantized_layers and "lm_head" not in q.float_layers
    head = q.module.lm_head
    assert isinstance(head, WeightOnlyLinear) and head.bits == 8 and head.packed_kernel == INT8_KERNEL
    assert torch.equal(q.module.model.embed_tokens.weight, lm.module.model.embed_tokens.weight)
    assert abs(ppl(q.module, held_out) / ppl(plain.module, held_out) - 1) < 0.01
    assert 0.9 < (q.weight_bytes - plain.weight_bytes) / (49152 * 576) < 1.1          # one byte per head weight
    head.calls.clear()
    greedy(q.module, lm.tokenizer, ["Shares rose"], 3)
    assert head.calls[INT8_KERNEL] == 3
    save(q, lm, tmp_path / "h")
    back = load_lm(tmp_path / "h")
    ids = lm.tokenizer("Shares rose", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(back.module(input_ids=ids).logits, q.module(input_ids=ids).logits)


def test_a_shelved_candidate_comes_back_bit_identical(lm):
    from quantgate.compare import Shelf
    from quantgate.quantize import quantize
    q = quantize(lm, WeightOnly(bits=3, group_size=64))
    ids = lm.tokenizer(["The BBC reported today that"], return_tensors="pt")["input_ids"]
    shelf = Shelf()
    assert shelf.put("int3-g64", q.module)
    with torch.inference_mode():
        assert torch.equal(shelf.get("int3-g64")(input_ids=ids).logits, q.module(input_ids=ids).logits)
