"""ONNX for classifiers, run by ONNX Runtime: the converted PT2E graph (static
int8, QAT, PT2E dynamic int8) exported as it is by torch.onnx's dynamo exporter,
so its quantize/dequantize ops become QuantizeLinear/DequantizeLinear nodes
around int8 weight initialisers (the QDQ form ONNX Runtime fuses into its int8
kernels), with quantgate's own weights, scales and zero points; batch dynamic,
sequence length the model's fixed padded length.

Not bit-identical to quantgate's model: quantgate runs the graph through
inductor's oneDNN int8 kernels, ONNX Runtime through its own, and the two round
their integer accumulations back to floats differently, so an activation on a
rounding boundary can land one code apart downstream. Measured on the bundled
classifier (556 test examples): static int8 555/556 identical predictions, QAT
556/556, logits within 0.09; `tests/test_export.py` holds those bounds."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import QuantgateError

NAME = "onnx"
RUNTIMES = "ONNX Runtime (onnxruntime.InferenceSession)"
FILE = "model.onnx"


def check(manifest: dict) -> None:
    if manifest.get("program"):
        return
    method = (manifest.get("recipe") or {}).get("method")
    if method == "dynamic-int8":
        raise QuantgateError("this dynamic int8 artifact runs torch.ao's fbgemm kernels, which ONNX cannot express; "
                             "quantize with dynamic-pt2e (the PT2E graph exports as ONNX)")
    raise QuantgateError(f"ONNX export writes int8 graphs (static, qat, dynamic-pt2e); this artifact is "
                         f"{manifest.get('name')}: quantize with static")


def write(model, folder: Path) -> dict:
    import warnings
    ex = model.encode(["an example", "another"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model.module.gm, (ex["input_ids"], ex["attention_mask"]), dynamo=True,
                                 dynamic_shapes=({0: batch}, {0: batch}), input_names=["input_ids", "attention_mask"],
                                 output_names=["logits"], verbose=False)
    prog.save(str(folder / FILE))
    model.tokenizer.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps({"labels": model.labels, "max_length": model.max_length}))
    import onnx
    ops = {}
    for n in onnx.load(str(folder / FILE), load_external_data=False).graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMul", "MatMulInteger"):
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"files": sorted(p.name for p in folder.iterdir()), "ops": ops, "exact": False,
            "notes": ["int8 kernels differ between runtimes: see the tolerance in quantgate/export/onnx.py"]}
