"""Re-score GPTQModel checkpoints that bench/gptq_vs_reference.py wrote (its
temp folder keeps calib.json and ref-<bits>-<group>/) on more held-out windows,
against quantgate's GPTQ and RTN quantized on exactly the same calibration
windows. Small evaluations rank two runs of the same algorithm by noise; this
gives them a larger one.

    .venv/bin/python bench/rescore_reference.py /tmp/gptq-bench-XXXX [--windows 40] [--variants search,plain]
"""

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import quantgate  # noqa: E402,F401  (process settings before torch)

import torch  # noqa: E402

from gptq_vs_reference import dequantize_gptq_checkpoint, perplexity, rtn_ppl  # noqa: E402
from quantgate.data import bbc_splits  # noqa: E402
from quantgate.models import load_causal_lm  # noqa: E402
from quantgate.quantize import quantize  # noqa: E402
from quantgate.recipes import GPTQ  # noqa: E402
import quantgate.tasks.causal_lm as T  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", help="bench temp folders holding calib.json and ref-<bits>-<group>/")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--variants", default="search,plain",
                    help="quantgate runs per checkpoint: search (scale search, the default recipe) or plain, "
                         "each optionally @damp (e.g. plain@0.0505: a perturbation that shows the noise floor)")
    a = ap.parse_args()
    lm = load_causal_lm()
    ev = T.eval_windows(lm.tokenizer, bbc_splits()["test"].texts, 512, a.windows)
    fp = perplexity(lm.module, ev)
    print(f"fp32 {fp:.2f} on {ev.shape[0]} held-out windows of 512 tokens", flush=True)
    from quantgate.methods import gptq as G
    make_windows = G.lm_windows
    for folder in map(Path, a.folders):
        cal = torch.tensor(json.loads((folder / "calib.json").read_text()))
        for ref_dir in sorted(folder.glob("ref-*-*")):
            bits, group = map(int, ref_dir.name.split("-")[1:])
            m = copy.deepcopy(lm.module)
            m.load_state_dict(dequantize_gptq_checkpoint(ref_dir, lm.module), strict=False)
            ref = perplexity(m, ev)
            del m
            rtn = rtn_ppl(lm, bits, group, ev)
            gap = lambda p: f"{100 * (rtn - p) / (rtn - fp):.0f}%"
            line = f"int{bits} g{group}: RTN {rtn:.2f}, GPTQModel {ref:.2f} ({gap(ref)})"
            for variant in a.variants.split(","):
                kind, _, damp = variant.partition("@")
                G.lm_windows = lambda *_, **__: (cal, {"hash": "gptqmodel", "source": "GPTQModel's windows"})
                try:
                    r = GPTQ(bits=bits, group_size=group, num_samples=cal.shape[0], seq_len=cal.shape[1],
                             scale_search=kind == "search", damp=float(damp or 0.05))
                    ours = perplexity(quantize(lm, r, bbc_splits()["train"]).module, ev)
                finally:
                    G.lm_windows = make_windows
                line += f"; quantgate {variant} {ours:.2f} ({gap(ours)}) {ours / ref:.3f}x"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
