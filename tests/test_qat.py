"""QAT: fake-quantized fine-tuning that ends in a real int8 graph, and never a
silent fall back to post-training quantization."""

import pytest
import torch

from quantgate.data import split
from quantgate.errors import QuantgateError
from quantgate.evaluate.metrics import accuracy
from quantgate.methods import pt2e
from quantgate.quantize import quantize
from quantgate.recipes import QAT
from quantgate.tasks.classification import predict


def test_qat_without_training_data_is_an_error(model, bbc):
    with pytest.raises(QuantgateError, match="QAT needs training data .* never falls back to post-training"):
        quantize(model, QAT(), bbc["calibration"])


def test_qat_trains_with_fake_quant_and_converts_to_int8(model, bbc):
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    q = quantize(model, QAT(weight_bits=4, steps=8, batch_size=16, lr=2e-5), train=bbc["train"])
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)                    # the float model is untouched
    assert len(q.train_losses) == 8 and all(l == l for l in q.train_losses)        # trained, no NaN
    status = pt2e.linear_status(q.module.gm)
    assert sum(status.values()) == 37 and not status.get("model.classifier", False)  # real int8 linears
    # weights live on the 4-bit grid: every int8 weight constant of a quantized linear is in -8..7
    ints = [t for t in pt2e.graph_constants(q.module.gm).values() if t.dtype == torch.int8 and t.dim() == 2]
    assert len(ints) == 37 and all(int(t.min()) >= -8 and int(t.max()) <= 7 for t in ints)
    assert any(int(t.min()) == -8 for t in ints)                                    # the grid is used, not int8's
    test = split(bbc["test"], {"a": 0.75, "b": 0.25})["b"]
    base = predict(model.module, model, test, verbose=False)
    cand = predict(q.module, model, test, verbose=False)
    assert accuracy(cand.labels, cand.pred) >= accuracy(base.labels, base.pred) - 0.03


def test_trained_state_moves_between_identically_prepared_graphs(model, bbc):
    """The CUDA path trains one exported graph and converts another on CPU; the
    hand-over must carry weights and fake-quantizer state exactly."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from quantgate.methods.qat import transfer
    enc = model.encode(bbc["calibration"].texts[:8])
    example = {k: v[:2] for k, v in enc.items()}

    def fresh():
        return pt2e.prepare(model.module, example, pt2e.x86_quantizer(weight_bits=4, qat=True), [], qat=True)
    a, b = fresh(), fresh()
    with torch.no_grad():
        a(enc["input_ids"], enc["attention_mask"])                # observers see data, ranges move
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 1e-3)                     # stands in for training steps
    transfer(a, b)
    for gm in (a, b):
        move_exported_model_to_eval(gm)
    with torch.no_grad():
        out_a, out_b = a(enc["input_ids"], enc["attention_mask"]), b(enc["input_ids"], enc["attention_mask"])
    assert torch.equal(out_a, out_b)
    with torch.no_grad():
        out_m = model.module(enc["input_ids"], enc["attention_mask"])
    assert not torch.equal(out_b, out_m)                          # the hand-over did carry something


def test_qat_on_cuda_without_a_gpu_is_a_clear_error(model, bbc):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(QuantgateError, match="no CUDA GPU is visible"):
        quantize(model, QAT(device="cuda", steps=1), train=bbc["train"])


def test_qat_less_accurate_than_ptq_is_a_warning(comparison):
    import copy

    from quantgate.diagnose import diagnose
    from quantgate.report.html import qat_line
    comp = copy.deepcopy(comparison)
    c = comp.candidates[0]
    c.extra["qat"] = {"ptq_accuracy": 0.9712, "qat_accuracy": 0.9604, "baseline_accuracy": 0.9802,
                      "recovered_share": (0.9604 - 0.9712) / (0.9802 - 0.9712), "note": None}
    w = [x for x in diagnose(comp) if x["code"] == "qat-worse-than-ptq"]
    assert len(w) == 1 and w[0]["candidate"] == c.name and "96.04%" in w[0]["message"] and "97.12%" in w[0]["message"]
    assert qat_line(c.extra["qat"]).startswith("QAT recovered none (-120%) of the post-training loss")
