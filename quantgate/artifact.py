"""A quantized artifact on disk: weights, the recipe that made them, and a
manifest with the lineage (base-model hash, calibration fingerprint, library
versions) and the evidence. Written to a temporary folder and renamed."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .errors import require
from .methods.common import Quantized
from .models import Model


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in module.state_dict().items():
        if isinstance(v, torch.Tensor) and not v.is_quantized and v.device.type != "meta":
            out[k] = v.detach().contiguous().clone()
    return out


def save(q: Quantized, model: Model, out: str | Path, evidence: dict | None = None, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    from .compare import environment

    out = Path(out)
    require(overwrite or not out.exists(), f"{out} already exists: choose another --out, or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = {
            "name": q.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_model": {"path": model.path, "sha": model.sha, "labels": model.labels, "max_length": model.max_length},
            "recipe": q.recipe.to_dict(), "calibration": q.calibration, "kernel": q.kernel,
            "quantized_layers": q.quantized_layers, "float_layers": q.float_layers, "float_ops": q.float_ops,
            "weight_bytes": q.weight_bytes, "quantize_seconds": q.seconds, "notes": q.notes,
            "environment": environment(), "evidence": evidence or {},
        }
        tensors = _tensors(q.module)
        if tensors:
            save_file(tensors, str(tmp / "weights.safetensors"))
            manifest["weights_file"] = "weights.safetensors"
        else:
            manifest["weights_file"] = None
            manifest["notes"] = q.notes + ["weights live in the compiled backend's packed format; "
                                           "rebuild them from the recipe, the base model and the calibration data"]
        (tmp / "recipe.yaml").write_text(q.recipe.to_yaml())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
