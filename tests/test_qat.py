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
    q = quantize(model, QAT(weight_bits=4, steps=12, batch_size=16, lr=2e-5), train=bbc["train"])
    assert len(q.train_losses) == 12 and all(l == l for l in q.train_losses)        # trained, no NaN
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
