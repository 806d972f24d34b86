"""Static int8 options beyond the defaults: symmetric activations; and a
compiled int8 graph compiles once per input shape."""

import torch
import torch._dynamo

from quantgate.data import split
from quantgate.evaluate import perf
from quantgate.evaluate.metrics import accuracy
from quantgate.methods import pt2e
from quantgate.quantize import quantize
from quantgate.recipes import Recipe, StaticInt8
from quantgate.tasks.classification import predict


def test_symmetric_activations_pin_the_zero_point_and_keep_accuracy(model, bbc):
    recipe = Recipe.parse("static-symact")
    assert recipe == StaticInt8(symmetric_activations=True) and recipe.name == "static-symact"
    q = quantize(model, StaticInt8(symmetric_activations=True, num_samples=32), bbc["calibration"])
    zps = [n.args[2] for n in q.module.gm.graph.nodes
           if n.op == "call_function" and "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)]
    mid = 63 if pt2e.reduce_range() else 127          # (quant_min + quant_max) // 2 of the u8 range in use (VNNI: 0..255)
    assert len(zps) >= 20 and set(zps) == {mid}    # q/k/v share one input quantizer
    test = split(bbc["test"], {"a": 0.75, "b": 0.25})["b"]
    base = predict(model.module, model, test, verbose=False)
    assert len(test) % 32                          # the last batch is padded (inside inference mode) ...
    with torch._dynamo.config.patch(error_on_recompile=True):   # ... and must not compile the graph again,
        cand = predict(q.module, model, test, verbose=False)
        perf.measure({"q": q.module}, model, test.texts, (32,), min_reps=2, budget_s=0.05)   # nor must latency
    assert accuracy(cand.labels, cand.pred) >= accuracy(base.labels, base.pred) - 0.03
