"""Dump GPTQ's codes and scales for SmolLM2 (int4 g64, 8 x 128 calibration
tokens of the BBC training split), or compare two dumps: the check that a
change to the sequential pass leaves the bundled model's result bit-identical.

    git worktree add /tmp/before <ref>
    PYTHONPATH=/tmp/before .venv/bin/python bench/gptq_codes.py dump /tmp/before.pt
    .venv/bin/python bench/gptq_codes.py dump /tmp/after.pt
    .venv/bin/python bench/gptq_codes.py same /tmp/before.pt /tmp/after.pt
"""

import sys

import torch


def dump(out: str) -> None:
    import quantgate
    from quantgate.data import bbc_splits
    from quantgate.models import load_causal_lm
    from quantgate.quantize import quantize
    from quantgate.recipes import GPTQ
    lm = load_causal_lm()
    lm.verbose = False
    q = quantize(lm, GPTQ(bits=4, group_size=64, num_samples=8, seq_len=128), bbc_splits()["train"])
    torch.save(q.module.state_dict(), out)
    print(f"{quantgate.__file__}: {len(q.quantized_layers)} layers -> {out}")


def same(a: str, b: str) -> None:
    x, y = torch.load(a), torch.load(b)
    diff = [k for k in x if k not in y or not torch.equal(x[k], y[k])] + [k for k in y if k not in x]
    print("bit-identical" if not diff else f"{len(diff)} tensors differ, e.g. {diff[:5]}")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    {"dump": dump, "same": same}[sys.argv[1]](*sys.argv[2:])
