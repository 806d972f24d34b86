"""What the Hugging Face directory formats share (compressed-tensors, GPTQ):
every float tensor as it is, each quantized layer's tensors in the format's
layout, `quantization_config` in config.json, the tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

FILE = "model.safetensors"


def write(lm, layers: dict, folder: Path, layer_tensors, quantization_config: dict) -> dict:
    """`layer_tensors(name, layer)` gives a quantized layer's tensors by their full names."""
    from safetensors.torch import save_file
    module, cfg = lm.module, lm.module.config
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()
             if k.rsplit(".", 1)[0] not in layers}
    tied = getattr(cfg, "tie_word_embeddings", False) and "lm_head" not in layers
    if tied:              # one tensor for the embedding and the head; a low-bit head copy unties them
        state.pop("lm_head.weight", None)
    for name, m in layers.items():
        state.update(layer_tensors(name, m))
    save_file(state, str(folder / FILE), metadata={"format": "pt"})
    d = cfg.to_dict()
    d["quantization_config"] = quantization_config
    d["tie_word_embeddings"] = tied
    (folder / "config.json").write_text(json.dumps(d, indent=2))
    lm.tokenizer.save_pretrained(folder)
    return {"files": sorted(p.name for p in folder.iterdir()), "layers": len(layers), "notes": []}


def nearest_group(layers: dict, group: int) -> int | None:
    """The largest of the kernels' group sizes (32, 64, 128) below `group` that divides every layer's width."""
    width = math.gcd(*(m.in_features for m in layers.values()))
    return max((c for c in (32, 64, 128) if c < group and width % c == 0), default=None)
