"""GPTQ int4-g128 on the bundled fine-tuned LM, calibrated on raw BBC training
articles (what `make demo-lm` uses) against calibrated on the task's own
training prompts with their answers: the same 32 x 256 calibration tokens,
scored on the 556 held-out topic prompts (exact match with its paired 95%
interval, KL on the answer tokens).

    .venv/bin/python bench/lm_calibration_source.py [--samples 32] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantgate.compare import Settings, compare  # noqa: E402
from quantgate.data import Dataset, bbc_splits  # noqa: E402
from quantgate.finetune import default_finetuned_lm  # noqa: E402
from quantgate.models import load_causal_lm  # noqa: E402
from quantgate.quantize import quantize  # noqa: E402
from quantgate.recipes import GPTQ  # noqa: E402
from quantgate.tasks.prompted import bbc_topic_prompts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    a = ap.parse_args()
    sp = bbc_splits()
    lm = load_causal_lm(default_finetuned_lm())
    train = bbc_topic_prompts(sp["train"])
    text = [p + " " + r for p, r in zip(train.prompts, train.references)]
    task = Dataset(text, ["-"] * len(text), [str(i) for i in range(len(text))], source="task prompts + answers")
    recipe = GPTQ(bits=4, group_size=128, num_samples=a.samples, seq_len=a.seq_len)
    for label, cal in (("raw articles", sp["train"]), ("task prompts", task)):
        q = quantize(lm, recipe, cal)
        d = compare(lm, bbc_topic_prompts(sp["test"]), [], None,
                    Settings(batch_sizes=(1,), decode_steps=2, decode_rounds=1, verbose=False), quantized=[q]).to_dict()
        c = d["candidates"][0]
        m = c["metrics"]["exact_match"]
        print(f"calibrated on {label:13s} fp32 {100 * d['baseline']['exact_match']:.2f}%  {q.name} "
              f"{100 * m['candidate']:.2f}%  {100 * m['delta']:+.2f} [{100 * m['ci_low']:+.2f}, {100 * m['ci_high']:+.2f}] "
              f"points  KL {c['mean_kl']:.3f}  calibration {c['calibration']['hash']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
