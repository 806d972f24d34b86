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
KIND = "sequence-classification"
RUNTIMES = "ONNX Runtime (onnxruntime.InferenceSession)"
FILE = "model.onnx"


def check(src) -> None:
    manifest = src.manifest
    if manifest.get("program"):
        return
    method = (manifest.get("recipe") or {}).get("method")
    if method == "dynamic-int8":
        raise QuantgateError("this dynamic int8 artifact runs torch.ao's fbgemm kernels, which ONNX cannot express; "
                             "quantize with dynamic-pt2e (the PT2E graph exports as ONNX)")
    raise QuantgateError(f"ONNX export writes int8 graphs (static, qat, dynamic-pt2e); this artifact is "
                         f"{manifest.get('name')}: quantize with static")


def write(src, folder: Path) -> dict:
    model = src.model
    to_onnx(model.module, model, folder / FILE, src.manifest.get("name", "this artifact"))
    model.tokenizer.save_pretrained(folder)
    (folder / "labels.json").write_text(json.dumps({"labels": model.labels, "max_length": model.max_length}))
    import onnx
    ops = {}
    for n in onnx.load(str(folder / FILE), load_external_data=False).graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMul", "MatMulInteger"):
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"files": sorted(p.name for p in folder.iterdir()), "ops": ops, "exact": False,
            "notes": ["int8 kernels differ between runtimes: see the tolerance in quantgate/export/onnx.py"]}


RUNTIME = "ONNX Runtime"


class OrtModule(torch.nn.Module):
    """An ONNX Runtime session behind the signature every classifier candidate has,
    (input_ids, attention_mask) -> logits, so a comparison scores and times the
    model as ONNX Runtime runs it."""

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        # ONNX Runtime's threads spin-wait after each run by default: interleaved with other models (or torch),
        # they would hold the cores the next model's call needs (fp32 in torch measured 3x slower beside them)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = str(path)
        self.version = ort.__version__

    def forward(self, input_ids, attention_mask):
        out = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})[0]
        return torch.from_numpy(out)


def to_onnx(module: torch.nn.Module, model, path: Path, what: str) -> Path:
    """`module` (the fp32 model, or a candidate's converted PT2E graph) written as ONNX at `path`."""
    import warnings

    from ..methods.pt2e import Compiled
    from ..models import LogitsModel
    if isinstance(module, Compiled):
        graph = module.gm
    elif isinstance(module, LogitsModel) and not any("quantized" in type(m).__module__ or hasattr(m, "qweight")
                                                     for m in module.modules()):
        graph = module
    else:
        raise QuantgateError(f"{what} cannot run in ONNX Runtime: only the fp32 model and int8 graphs (static, qat, "
                             "dynamic-pt2e) export as ONNX; drop it from --recipes or compare without --runtime")
    ex = model.encode(["an example", "another"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(graph, (ex["input_ids"], ex["attention_mask"]), dynamo=True,
                                 dynamic_shapes=({0: batch}, {0: batch}), input_names=["input_ids", "attention_mask"],
                                 output_names=["logits"], verbose=False)
    prog.save(str(path))
    return path


def serve(module: torch.nn.Module, model, folder: Path, what: str) -> OrtModule:
    """`module` exported as ONNX into `folder` and run by ONNX Runtime."""
    return OrtModule(to_onnx(module, model, folder / FILE, what))
