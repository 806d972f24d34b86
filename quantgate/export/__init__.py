"""export(ARTIFACT, format, out): a saved quantgate artifact written in the
format the serving runtime loads, from the stored codes, never re-rounded.

    from quantgate.export import export
    export("runs/smollm2-int4", "compressed-tensors", "deploy/smollm2")

One module per format (compressed_tensors.py, gptq.py, gguf.py, peft.py,
onnx.py), each with the kind of model it takes (`KIND`), `check(source)`
(refuse what it cannot write exactly, naming the nearest recipe that can) and
`write(source, folder)`; a `Source` is the artifact, its manifest, and its
model and low-bit layers, loaded when a check or a writer first asks. The
output is written to a temporary folder beside `out` and renamed when
complete, with `EXPORT.json` saying what it came from.

A comparison can also run every model where it will be served: onnx.py's
`serve` (ONNX Runtime, classifiers) and llamacpp.py's `serve` (llama.cpp, LMs,
in a worker process of the Python that has llama-cpp-python)."""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path

from ..errors import QuantgateError, require
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


def low_bit_layers(module) -> tuple[dict, list[str]]:
    """A model's integer weight-only layers (name -> WeightOnlyLinear) and the names of its NF4 layers."""
    from ..methods.nf4 import NF4Linear
    from ..methods.weight_only import WeightOnlyLinear
    mods = list(module.named_modules())
    return ({n: m for n, m in mods if isinstance(m, WeightOnlyLinear)}, [n for n, m in mods if isinstance(m, NF4Linear)])


class Source:
    """What every format writes from: the artifact folder, its (verified) manifest, and on
    first use its model (`artifact.load`), integer weight-only layers and NF4 layers."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest

    @cached_property
    def model(self):
        from ..artifact import load
        return load(self.folder)

    @cached_property
    def layers(self) -> dict:
        return low_bit_layers(self.model.module)[0]

    @cached_property
    def nf4(self) -> list[str]:
        return low_bit_layers(self.model.module)[1]

    def weights_only(self) -> None:
        """The LM formats that store weights refuse a QLoRA artifact: its adapters go as peft."""
        require(not self.manifest.get("adapters"), f"{self.folder} is a QLoRA artifact (NF4 base + adapters): "
                                                   "export --format peft for the adapters")


def export(artifact: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> dict:
    """Write `artifact` (a saved artifact folder) as `fmt` into `out`; returns EXPORT.json's content."""
    from ..artifact import model_kind, open_artifact
    from ..report.files import atomic_dir
    require(fmt in FORMATS, f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    src = Path(artifact)
    require(src.is_dir(), f"{src} is not an artifact folder")
    manifest = open_artifact(src)                 # verifies every file's hash
    fm, kind = FORMATS[fmt], model_kind(manifest)
    if kind != fm.KIND:
        fits = ", ".join(n for n, f in FORMATS.items() if f.KIND == kind)
        raise QuantgateError(f"{src} holds a {kind} artifact and {fmt} is for a {fm.KIND}: use {fits}")
    out = check_out(out, overwrite)
    source = Source(src, manifest)
    fm.check(source)
    with atomic_dir(out, replace=overwrite) as tmp:
        _record(tmp, fmt, fm, src, manifest, fm.write(source, tmp))
    return json.loads((out / MARKER).read_text())


def _record(folder: Path, fmt: str, fm, src: Path, manifest: dict, done: dict) -> None:
    """EXPORT.json: the format, who loads it, and the artifact it came from."""
    record = {"format": fmt, "runtimes": fm.RUNTIMES, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "artifact": {"path": str(src), "name": manifest.get("name"), "content_hash": manifest["content_hash"],
                           "base_model": manifest.get("base_model"), "recipe": manifest.get("recipe")},
              "exact": True} | done
    (folder / MARKER).write_text(json.dumps(record, indent=2, default=str))
