"""Half precision (bf16 / fp16) as a candidate like any other, for classifiers and LMs: refused where the
hardware has no fast path for it, saved and loaded back bit for bit, and called out when a quantized
candidate is no faster than it."""

import pytest
import torch

from quantgate.errors import QuantgateError
from quantgate.methods.half import fast_path
from quantgate.quantize import quantize
from quantgate.recipes import Half, Recipe

BF16 = fast_path("bf16") is not None


def test_recipe_names_parse_back():
    assert Recipe.parse("bf16") == Half(dtype="bf16") and Recipe.parse("fp16").name == "fp16"
    with pytest.raises(QuantgateError, match="exclude has no effect"):
        Half(dtype="bf16", exclude=("classifier",))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_refused_where_there_is_no_fast_path(model, dtype):
    """On this project's CPUs: bf16 is native on AVX512-BF16 / AMX machines, fp16 only with AMX-FP16."""
    if fast_path(dtype) is not None:
        assert quantize(model, Half(dtype=dtype)).module is not None
        return
    with pytest.raises(QuantgateError, match=f"{dtype}: this machine has no fast path for it"):
        quantize(model, Half(dtype=dtype))


@pytest.mark.skipif(not BF16, reason="no native bf16 here (the refusal is tested instead)")
def test_bf16_classifier_compares_saves_and_reloads(model, bbc, tmp_path):
    from quantgate.artifact import load, save
    from quantgate.compare import Settings, compare
    s = Settings(batch_sizes=(1, 8), perf_budget_s=0.3, perf_min_reps=3, n_boot=200, verbose=False)
    q = quantize(model, Half(dtype="bf16"))     # compared, then saved: each batch shape is compiled once
    comp = compare(model, bbc["test"].head(64), [Recipe.parse("int8")], None, s, quantized=[q])
    half = comp.candidate("bf16")
    assert "bf16" in half.kernel and abs(half.metrics["accuracy"]["delta"]) <= 0.03
    assert 15.9 < half.footprint["bits_per_param"] < 16.1
    enc = model.encode(bbc["test"].texts[:8])                   # batch 8: timed above
    with torch.no_grad():
        want = q.module(enc["input_ids"], enc["attention_mask"])
        back = load(save(q, model, tmp_path / "bf16")).module(enc["input_ids"], enc["attention_mask"])
    assert want.dtype == torch.float32 and torch.equal(want, back)
    int8 = comp.candidate("int8")          # weight-only int8 dequantizes at batch 8 here: slower than bf16
    said = [w for w in comp.warnings if w["code"] == "half-suffices" and w["candidate"] == "int8"]
    slower = all(int8.perf["batch_sizes"][b]["p50_ms"] >= half.perf["batch_sizes"][b]["p50_ms"] for b in ("1", "8"))
    assert bool(said) == slower


@pytest.mark.skipif(not BF16, reason="no native bf16 here (the refusal is tested instead)")
def test_bf16_language_model_runs_and_reloads_in_bf16(tmp_path):
    from quantgate.artifact import load_lm, save
    from quantgate.models import load_causal_lm
    from quantgate.tasks.causal_lm import runtime
    lm = load_causal_lm()
    q = quantize(lm, Half(dtype="bf16"))
    assert q.module.lm_head.weight.dtype == torch.bfloat16 and q.footprint["bits_per_param"] < 16.1
    assert runtime(q.module) == "transformers generate"       # quantgate's decoder computes in fp32
    ids = lm.tokenizer("The bank said on Monday that its profits rose", return_tensors="pt")["input_ids"]
    back = load_lm(save(q, lm, tmp_path / "bf16"))
    assert back.module.lm_head.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        assert torch.equal(q.module(input_ids=ids).logits, back.module(input_ids=ids).logits)
        top = (q.module(input_ids=ids).logits.argmax(-1) == lm.module(input_ids=ids).logits.argmax(-1)).float().mean()
    assert top >= 0.8
