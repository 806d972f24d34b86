"""A quantized artifact on disk: weights, the recipe that made them, and a
manifest with the lineage (base-model hash, calibration fingerprint, library
versions, hardware) and the evidence. Written to a temporary folder and renamed.

The weights file holds every tensor the quantized model runs with, as plain
tensors: int8/int4 codes, scales and zero points (unpacked from torch.ao's
packed parameters, or read from an exported graph's constants), float layers.
`content_hash` covers those tensors, the recipe, the base-model hash and the
calibration fingerprint (not timestamps): the same inputs and seed give the
same hash, and different calibration data gives a different one."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .errors import require
from .methods.common import Quantized, module_tensors
from .models import Model


def content_hash(tensors: dict[str, torch.Tensor], recipe: dict, base_sha: str, calibration: dict | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": recipe, "base": base_sha, "calibration": (calibration or {}).get("hash")},
                        sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def write(q: Quantized, model: Model, folder: Path, evidence: dict | None = None, extra: dict | None = None) -> dict:
    """Write weights.safetensors, recipe.yaml and manifest.json into an existing folder."""
    from safetensors.torch import save_file

    from .compare import environment

    tensors = {k: v.detach().contiguous().clone() for k, v in module_tensors(q.module).items()}
    manifest = {
        "name": q.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "content_hash": content_hash(tensors, q.recipe.to_dict(), model.sha, q.calibration),
        "base_model": {"path": model.path, "sha": model.sha, "labels": model.labels, "max_length": model.max_length},
        "recipe": q.recipe.to_dict(), "calibration": q.calibration, "kernel": q.kernel,
        "quantized_layers": q.quantized_layers, "float_layers": q.float_layers, "float_ops": q.float_ops,
        "weight_bytes": q.weight_bytes, "quantize_seconds": q.seconds, "notes": q.notes,
        "environment": environment(), "evidence": evidence or {}, **(extra or {}),
        "weights_file": "weights.safetensors" if tensors else None,
    }
    if tensors:
        # safetensors refuses tensors that share memory; the copies above do not
        save_file(tensors, str(folder / "weights.safetensors"))
    if q.activation_profile:
        (folder / "activation_profile.json").write_text(json.dumps(q.activation_profile))
        manifest["activation_profile"] = "activation_profile.json"
    (folder / "recipe.yaml").write_text(q.recipe.to_yaml())
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def save(q: Quantized, model: Model, out: str | Path, evidence: dict | None = None, overwrite: bool = False) -> Path:
    from .report.files import atomic_dir
    out = Path(out)
    require(overwrite or not out.exists(), f"{out} already exists: choose another --out, or remove it first")
    with atomic_dir(out, replace=overwrite) as tmp:
        write(q, model, tmp, evidence)
    return out
