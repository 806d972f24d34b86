"""Runs inside the reference venv (bench/setup_reference.sh): GPTQModel
quantizes the model on the given calibration windows and saves its packed
checkpoint; prints its wall time as JSON on the last line (the caller samples
its memory).
Called by bench/gptq_vs_reference.py; not imported by quantgate."""

import json
import os
import sys
import time

os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")


def main():
    model_dir, calib, bits, group, act_order, damp, out = sys.argv[1:8]
    from gptqmodel import GPTQModel, QuantizeConfig
    windows = json.load(open(calib))
    data = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in windows]
    # act_order=1: GPTQModel's default (group-aware act-order); 0: plain column order
    kw = {} if act_order == "1" else {"desc_act": False, "act_group_aware": False}
    qc = QuantizeConfig(bits=int(bits), group_size=int(group), sym=True, damp_percent=float(damp), **kw)
    model = GPTQModel.load(model_dir, qc, device="cpu")
    t0 = time.perf_counter()
    model.quantize(data, batch_size=1)
    seconds = time.perf_counter() - t0
    model.save(out)
    print(json.dumps({"seconds": seconds, "quantize_config": {k: str(v) for k, v in qc.to_dict().items()}}), flush=True)
    # GPTQModel's worker threads kept the process busy after the checkpoint was written
    # (seen here); the result is on disk and printed: leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
