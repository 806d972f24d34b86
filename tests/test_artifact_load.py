"""`quantgate.artifact.load(DIR)`: one loader for every method's artifact, which
runs the model again with the outputs of the model that was saved, bit for bit:
classifiers (dynamic int8, static int8 and QAT from their saved program, weight-
only) and causal LMs (round-to-nearest, GPTQ, NF4, QLoRA)."""

import pytest
import torch

from quantgate.artifact import load, save
from quantgate.quantize import quantize
from quantgate.recipes import GPTQ, QAT, QLoRA, Recipe, StaticInt8

LATER_BLOCKS = ("model.layers.[3-9].*", "model.layers.[12]?.*")


@pytest.mark.parametrize("spec", ["dynamic", "static", "qat", "int8", "int4-g32"])
def test_every_classifier_artifact_loads_and_runs_as_saved(model, bbc, tmp_path, spec):
    r = {"static": StaticInt8(num_samples=32), "qat": QAT(steps=4, batch_size=8)}.get(spec) or Recipe.parse(spec)
    q = quantize(model, r, bbc["calibration"], train=bbc["train"])
    back = load(save(q, model, tmp_path / spec))
    enc = model.encode(bbc["test"].texts[:24])
    with torch.inference_mode():
        assert torch.equal(q.module(enc["input_ids"], enc["attention_mask"]),
                           back.module(enc["input_ids"], enc["attention_mask"]))
    assert back.labels == model.labels and back.encode(["x"])["input_ids"].shape == (1, model.max_length)
    if spec in ("static", "qat"):
        assert (tmp_path / spec / "program.pt2").is_file()        # the converted graph, scales in it


@pytest.mark.parametrize("spec", ["int4-g64", "gptq", "nf4", "qlora"])
def test_every_lm_artifact_loads_and_runs_as_saved(bbc, tmp_path, spec):
    from quantgate.models import load_causal_lm
    lm = load_causal_lm()
    lm.verbose = False
    r = {"gptq": GPTQ(num_samples=4, seq_len=64, exclude=LATER_BLOCKS),
         "qlora": QLoRA(rank=4, alpha=8, steps=2, batch_size=2, seq_len=32, targets=("q_proj",))}.get(spec) \
        or Recipe.parse(spec)
    q = quantize(lm, r, bbc["train"], train=bbc["train"])
    back = load(save(q, lm, tmp_path / spec))
    ids = lm.tokenizer("Shares in the bank rose sharply on Monday after the report", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(q.module(input_ids=ids).logits, back.module(input_ids=ids).logits)
