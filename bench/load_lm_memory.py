"""What loading a saved LM artifact costs, against building the float model first.

    .venv/bin/python bench/load_lm_memory.py             # int4-g128 of the bundled SmolLM2, 3 rounds

`artifact.load_lm` builds the model's skeleton with its parameters on the meta
device (accelerate's init_empty_weights), puts the quantized layers in, and
assigns the saved tensors themselves (load_state_dict(assign=True)); the
reference is how it loaded until 2026-12-02: the whole float model built in
fp32 (and randomly initialised) first, then its layers replaced and its
weights copied in. Each load runs in a fresh process, alternating, and reports
its wall time and its peak RSS over the process's start (VmHWM)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import contextlib, sys, time
import torch
from quantgate.evaluate.perf import proc_status_bytes
import accelerate
if sys.argv[2] == "reference":
    accelerate.init_empty_weights = contextlib.nullcontext     # build every parameter in fp32 first
import quantgate.artifact as A
start = proc_status_bytes("VmRSS")
t = time.perf_counter()
m = A.load_lm(sys.argv[1])
print(time.perf_counter() - t, proc_status_bytes("VmHWM") - start)
"""


def main(rounds: int = 3) -> None:
    from quantgate.artifact import save
    from quantgate.methods.common import tensor_bytes
    from quantgate.models import load_causal_lm
    from quantgate.quantize import quantize
    from quantgate.recipes import Recipe
    lm = load_causal_lm()
    lm.verbose = False
    with tempfile.TemporaryDirectory() as d:
        folder = save(quantize(lm, Recipe.parse("int4-g128")), lm, Path(d) / "int4")
        stored = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        runs = {"now (meta skeleton, tensors assigned)": [], "reference (fp32 model built first)": []}
        for _ in range(rounds):
            for name in runs:
                out = subprocess.run([sys.executable, "-c", CHILD, str(folder), name.split()[0]], check=True,
                                     capture_output=True, text=True, cwd=ROOT).stdout.split()
                runs[name].append((float(out[-2]), int(out[-1])))
    print(f"SmolLM2-135M int4-g128 artifact: {stored / 2**20:.0f} MB of weights files; the model in fp32: "
          f"{tensor_bytes(lm.module) / 2**20:.0f} MB. Median of {rounds} fresh processes:")
    for name, v in runs.items():
        print(f"  {name}: {statistics.median(t for t, _ in v):.2f} s, peak RSS over start "
              f"{statistics.median(b for _, b in v) / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
