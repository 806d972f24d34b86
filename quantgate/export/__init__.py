"""export(ARTIFACT, format, out): a saved quantgate artifact written in the
format the serving runtime loads, from the stored codes, never re-rounded.

    from quantgate.export import export
    export("runs/smollm2-int4", "compressed-tensors", "deploy/smollm2")

One module per format (compressed_tensors.py, gptq.py, gguf.py, peft.py, onnx.py), each with
`check` (refuse what it cannot write exactly, naming the nearest recipe that
it can) and `write`. The output is written to a temporary folder beside `out`
and renamed when complete, with `EXPORT.json` saying what it came from."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import require
from . import compressed_tensors, gguf, gptq, onnx, peft

FORMATS = {m.NAME: m for m in (compressed_tensors, gptq, gguf, peft, onnx)}
MARKER = "EXPORT.json"


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """An --out that does not exist, or (with overwrite) an earlier export: checked before any work."""
    from ..report.files import check_out_path
    out = Path(out)
    if out.exists():
        require(overwrite, f"{out} already exists: choose another --out, or pass --overwrite")
        require(out.is_dir() and (out / MARKER).is_file(),
                f"{out} exists and is not a quantgate export: --overwrite replaces only a folder quantgate "
                "exported; choose another --out")
    return check_out_path(out)


def export(artifact: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> dict:
    """Write `artifact` (a saved artifact folder) as `fmt` into `out`; returns EXPORT.json's content."""
    from ..artifact import load, load_lm, model_kind, open_artifact
    from ..methods.nf4 import NF4Linear
    from ..methods.weight_only import WeightOnlyLinear
    from ..report.files import atomic_dir
    require(fmt in FORMATS, f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    src = Path(artifact)
    require(src.is_dir(), f"{src} is not an artifact folder")
    manifest = open_artifact(src)                 # verifies every file's hash
    is_lm = model_kind(manifest) == "causal-lm"
    require(is_lm == (fmt != "onnx"), f"{src} is a {'causal-LM' if is_lm else 'classifier'} artifact; "
            + ("onnx is for classifiers: use compressed-tensors, gptq, gguf or peft" if is_lm else
               "classifiers export as onnx"))
    out = check_out(out, overwrite)
    fm = FORMATS[fmt]
    if fmt == "onnx":
        fm.check(manifest)
        with atomic_dir(out, replace=overwrite) as tmp:
            done = fm.write(load(src), tmp)
            _record(tmp, fmt, fm, src, manifest, done)
        return json.loads((out / MARKER).read_text())
    if fmt == "peft":
        fm.check(manifest)
    lm = load_lm(src)
    layers = {n: m for n, m in lm.module.named_modules() if isinstance(m, WeightOnlyLinear)}
    if fmt != "peft":
        require(not manifest.get("adapters"),
                f"{src} is a QLoRA artifact (NF4 base + adapters): export --format peft for the adapters")
        fm.check(lm.module.config, layers, [n for n, m in lm.module.named_modules() if isinstance(m, NF4Linear)])
    with atomic_dir(out, replace=overwrite) as tmp:
        done = fm.write(lm, manifest if fmt == "peft" else layers, tmp)
        _record(tmp, fmt, fm, src, manifest, done)
    return json.loads((out / MARKER).read_text())


def _record(folder: Path, fmt: str, fm, src: Path, manifest: dict, done: dict) -> None:
    """EXPORT.json: the format, who loads it, and the artifact it came from."""
    record = {"format": fmt, "runtimes": fm.RUNTIMES, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "artifact": {"path": str(src), "name": manifest.get("name"), "content_hash": manifest["content_hash"],
                           "base_model": manifest.get("base_model"), "recipe": manifest.get("recipe")},
              "exact": True} | done
    (folder / MARKER).write_text(json.dumps(record, indent=2, default=str))
