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
        want = q.module(enc["input_ids"], enc["attention_mask"])
    assert back.labels == model.labels and back.encode(["x"])["input_ids"].shape == (1, model.max_length)
    if spec in ("static", "qat"):
        assert (folder / "program.pt2").is_file()        # the converted graph, scales in it
    if spec != "static":
        with torch.inference_mode():
            assert torch.equal(want, back.module(enc["input_ids"], enc["attention_mask"]))
    else:  # run in a fresh process, where nothing has registered the quantized ops the graph calls (one compile)
        import subprocess
        import sys
        code = (f"import torch; from quantgate.artifact import load; m = load({str(folder)!r}); "
                f"e = m.encode({bbc['test'].texts[:24]!r}); "
                f"torch.save(m.module(e['input_ids'], e['attention_mask']), {str(tmp_path / 'out.pt')!r})")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert torch.equal(want, torch.load(tmp_path / "out.pt"))


@pytest.mark.parametrize("spec", ["int4-g64", "gptq", "nf4", "qlora"])
def test_every_lm_artifact_loads_and_runs_as_saved(bbc, tmp_path, spec):
    from quantgate.models import load_causal_lm
    lm = load_causal_lm()
    lm.verbose = False
    r = {"gptq": GPTQ(num_samples=4, seq_len=64, exclude=LATER_BLOCKS),
         "qlora": QLoRA(rank=4, alpha=8, steps=2, batch_size=2, seq_len=32, targets=("q_proj",))}.get(spec) \
        or Recipe.parse(spec)
    q = quantize(lm, r, bbc["train"], train=bbc["train"])
    folder = save(q, lm, tmp_path / spec)
    back = load(folder)
    ids = lm.tokenizer("Shares in the bank rose sharply on Monday after the report", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(q.module(input_ids=ids).logits, back.module(input_ids=ids).logits)
    if spec == "int4-g64":   # loading builds no float model first: its peak, in a fresh process, stays under fp32's size
        import subprocess
        import sys

        from quantgate.methods.common import tensor_bytes
        code = ("from quantgate.evaluate.perf import proc_status_bytes; import quantgate.artifact as A; "
                f"s = proc_status_bytes('VmRSS'); A.load_lm({str(folder)!r}); print(proc_status_bytes('VmHWM') - s)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        peak, fp32 = int(r.stdout.split()[-1]), tensor_bytes(lm.module)
        assert peak < fp32, f"loading peaked {peak / 2**20:.0f} MB over its start: the fp32 model is {fp32 / 2**20:.0f} MB"


def test_a_mixed_precision_lm_artifact_keeps_each_layers_format(bbc, tmp_path):
    """int8_layers: GPTQ int4 everywhere but two layers stored as int8 per channel; the artifact
    records each layer's format and loads bit-identical."""
    import json
    from quantgate.methods.weight_only import WeightOnlyLinear
    from quantgate.models import load_causal_lm
    lm = load_causal_lm()
    lm.verbose = False
    kept = ("model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj")
    r = GPTQ(num_samples=4, seq_len=64, exclude=LATER_BLOCKS, int8_layers=kept)
    assert r.name == "gptq-int4-g128+float2+int8x2" and Recipe.from_dict(r.to_dict()) == r
    q = quantize(lm, r, bbc["train"])
    assert set(kept) <= set(q.quantized_layers) and not set(kept) & set(q.float_layers)
    assert all(q.module.get_submodule(n).bits == 8 for n in kept)
    assert q.module.get_submodule("model.layers.0.self_attn.q_proj").bits == 4
    folder = save(q, lm, tmp_path / "mixed")
    layers = json.loads((folder / "manifest.json").read_text())["layers"]
    assert {n: (layers[n]["bits"], layers[n]["group_size"]) for n in kept} == {n: (8, None) for n in kept}
    back = load(folder)
    assert isinstance(back.module.get_submodule(kept[0]), WeightOnlyLinear)
    ids = lm.tokenizer("Shares in the bank rose sharply on Monday", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(q.module(input_ids=ids).logits, back.module(input_ids=ids).logits)
