"""The static int8 classifier in ONNX Runtime: quantgate's export (its own PT2E
scales and int8 weights as a QDQ graph) against ONNX Runtime's own
quantize_static (QDQ, per-channel weights, the same 128 calibration examples)
and quantize_dynamic of the fp32 export, and against quantgate's PT2E model in
PyTorch (oneDNN int8 through inductor); accuracy on the BBC test split and
throughput at batch 1 and 32, all models timed interleaved in one run.

    .venv/bin/python bench/deploy_onnx.py
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantgate.data import bbc_splits  # noqa: E402
from quantgate.evaluate import perf  # noqa: E402
from quantgate.export.onnx import OrtModule, serve  # noqa: E402
from quantgate.finetune import finetune  # noqa: E402
from quantgate.models import load_classifier  # noqa: E402
from quantgate.quantize import quantize  # noqa: E402
from quantgate.recipes import StaticInt8  # noqa: E402


def accuracy(module, model, data) -> float:
    enc = model.encode(data.texts)
    pred = []
    with torch.inference_mode():
        for i in range(0, len(data), 32):
            pred.append(module(enc["input_ids"][i:i + 32], enc["attention_mask"][i:i + 32]).argmax(-1))
    y = torch.tensor([model.labels.index(v) for v in data.labels])
    return float((torch.cat(pred) == y).float().mean())


def main():
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    sp = bbc_splits()
    model = load_classifier(finetune(sp["train"], verbose=False))
    work = Path(tempfile.mkdtemp(prefix="quantgate-onnx-bench-"))
    q = quantize(model, StaticInt8(), sp["calibration"])
    mods = {"fp32 (PyTorch)": model.module, "quantgate static (PyTorch, oneDNN int8)": q.module}
    mods["fp32 (ONNX Runtime)"] = serve(model.module, model, work / "fp32", "fp32")
    mods["quantgate static -> ONNX (ONNX Runtime)"] = serve(q.module, model, work / "qg", "static")
    fp32 = work / "fp32" / "model.onnx"
    pre = work / "fp32-pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    cal = model.encode(sp["calibration"].texts[:128])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= 128:
                return None
            s = slice(self.i, self.i + 16)
            self.i += 16
            return {"input_ids": cal["input_ids"][s].numpy(), "attention_mask": cal["attention_mask"][s].numpy()}

    quantize_static(str(pre), str(work / "ort-static.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    quantize_dynamic(str(pre), str(work / "ort-dynamic.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    mods["ORT quantize_static (ONNX Runtime)"] = OrtModule(work / "ort-static.onnx")
    mods["ORT quantize_dynamic (ONNX Runtime)"] = OrtModule(work / "ort-dynamic.onnx")
    acc = {k: accuracy(m, model, sp["test"]) for k, m in mods.items()}
    torch.set_num_threads(2)
    speed = perf.measure(mods, model, sp["test"].texts, (1, 32), budget_s=3.0)
    ref = speed["fp32 (PyTorch)"]["batch_sizes"]
    print(f"BBC test ({len(sp['test'])} examples), {torch.get_num_threads()} threads, all models interleaved\n")
    print(f"{'model':42s} {'accuracy %':>10s} {'ms @1':>7s} {'x fp32 @1':>9s} {'ms @32':>8s} {'x fp32 @32':>10s}")
    for k in mods:
        b = speed[k]["batch_sizes"]
        print(f"{k:42s} {100 * acc[k]:10.2f} {b['1']['p50_ms']:7.1f} {ref['1']['p50_ms'] / b['1']['p50_ms']:9.2f} "
              f"{b['32']['p50_ms']:8.1f} {ref['32']['p50_ms'] / b['32']['p50_ms']:10.2f}")
    print({k: round(100 * v, 2) for k, v in acc.items()})
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
