"""`quantgate.artifact.load(DIR)`: one loader for every method's artifact, which
runs the model again with the outputs of the model that was saved, bit for bit:
classifiers (dynamic int8, static int8 and QAT from their saved program, weight-
only) and causal LMs (round-to-nearest, GPTQ, NF4, QLoRA)."""

import pytest
import torch

from quantgate.artifact import load, save
from quantgate.quantize import quantize
from quantgate.recipes import GPTQ, QLoRA, Recipe

LATER_BLOCKS = ("model.layers.[3-9].*", "model.layers.[12]?.*")


@pytest.mark.parametrize("spec", ["dynamic", "static", "qat", "int8", "int4-g32"])
def test_every_classifier_artifact_loads_and_runs_as_saved(model, bbc, pt2e_artifact, tmp_path, spec):
    if spec in ("static", "qat"):
        q, folder = pt2e_artifact(spec)
    else:
        q = quantize(model, Recipe.parse(spec), bbc["calibration"])
        folder = save(q, model, tmp_path / spec)
    back = load(folder)
    enc = model.encode(bbc["test"].texts[:24])
    with torch.inference_mode():
        assert torch.equal(q.module(enc["input_ids"], enc["attention_mask"]),
                           back.module(enc["input_ids"], enc["attention_mask"]))
    assert back.labels == model.labels and back.encode(["x"])["input_ids"].shape == (1, model.max_length)
    if spec in ("static", "qat"):
        assert (folder / "program.pt2").is_file()        # the converted graph, scales in it
    if spec == "static":  # and in a fresh process, where nothing has registered the quantized ops the graph calls
        import subprocess
        import sys
        code = (f"import torch; from quantgate.artifact import load; m = load({str(folder)!r}); "
                f"e = m.encode({bbc['test'].texts[:4]!r}); print(m.module(e['input_ids'], e['attention_mask']).argmax(-1).tolist())")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        with torch.inference_mode():
            ref = q.module(enc["input_ids"][:4], enc["attention_mask"][:4]).argmax(-1).tolist()
        assert r.stdout.strip().splitlines()[-1] == str(ref)


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
