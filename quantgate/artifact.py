"""A quantized artifact on disk: weights, the recipe that made them, and a
manifest with the lineage (base-model hash, calibration fingerprint, library
versions, hardware) and the evidence. Written to a temporary folder and renamed.

The weights file holds every tensor the quantized model runs with, as plain
tensors: int8/int4 codes, scales and zero points (unpacked from torch.ao's
packed parameters, or read from an exported graph's constants), float layers.
`content_hash` covers those tensors, the recipe, the base-model hash and the
calibration fingerprint (not timestamps): the same inputs and seed give the
same hash, and different calibration data gives a different one.

`load(DIR)` runs any artifact again, the one loader for every method: a
converted PT2E graph (static int8, QAT, PT2E dynamic int8) is saved whole with
`torch.export.save` (`program.pt2`: its activation scales live in the graph)
and compiled again on load; every other model is rebuilt from the saved
config, its low-bit layers (`layers` in the manifest: weight-only, GPTQ, NF4,
torch.ao dynamic int8) made empty and filled from the weights file."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .errors import QuantgateError, require
from .methods.common import Quantized, module_tensors
from .models import CausalLM, Model


def content_hash(tensors: dict[str, torch.Tensor], recipe: dict, base_sha: str, calibration: dict | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"recipe": recipe, "base": base_sha, "calibration": (calibration or {}).get("hash")},
                        sort_keys=True).encode())
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy() if t.numel() else b"")     # the buffer itself, not a copy
    return h.hexdigest()[:20]


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in an artifact folder but the manifest and hidden files (the registry's marker)."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != "manifest.json" and not p.name.startswith("."):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[rel] = h.hexdigest()
    return out


def read_manifest(folder: Path) -> dict:
    """An artifact's manifest.json, or one clear error if it is missing or not valid JSON."""
    p = Path(folder) / "manifest.json"
    require(p.is_file(), f"{folder} is not a quantgate artifact (no manifest.json)")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QuantgateError(f"{p} is damaged (not valid JSON: {e}); re-save the artifact, "
                             "or export another version") from None
    require(isinstance(m, dict) and isinstance(m.get("content_hash"), str),
            f"{p} is not a quantgate manifest (no content_hash); re-save the artifact")
    return m


def verify_files(folder: Path, manifest: dict | None = None) -> list[str]:
    """Files of an artifact that are missing or differ from the hashes its manifest recorded at save time."""
    m = manifest or read_manifest(folder)
    want = m.get("files")
    if not isinstance(want, dict):
        return []           # saved before quantgate recorded file hashes
    have = file_hashes(Path(folder))
    problems = [f"{name} is missing" for name in want if name not in have]
    problems += [f"{name} differs from the hash recorded at save time (damaged or edited)"
                 for name in want if name in have and have[name] != want[name]]
    return problems


def open_artifact(folder: str | Path, manifest: dict | None = None) -> dict:
    """The manifest of an artifact whose files all match the hashes recorded at save time; else one clear error."""
    m = manifest or read_manifest(folder)
    bad = verify_files(folder, m)
    require(not bad, f"{folder} is damaged: {'; '.join(bad[:3])}; re-save the artifact")
    return m


class Shards:
    """The tensors of safetensors files already in a folder (the streaming path writes its blocks
    as it goes), by name, each read from its file when asked (not mapped: a mapped file's pages
    would count as the process's memory): what `content_hash` covers, never all in memory."""

    def __init__(self, folder: Path, files: list[str]):
        from .streaming import _CODES, read_table
        self.dtypes = {code: dtype for dtype, code in _CODES.items()}
        self.where = {}
        for f in files:
            p = Path(folder) / f
            table, start = read_table(p)
            for k, v in table.items():
                self.where[k] = (p, start, v)

    def __iter__(self):
        return iter(self.where)

    def __len__(self):
        return len(self.where)

    def __getitem__(self, k: str) -> torch.Tensor:
        p, start, v = self.where[k]
        a, b = v["data_offsets"]
        with open(p, "rb") as f:
            f.seek(start + a)
            buf = bytearray(f.read(b - a))
        t = torch.frombuffer(buf, dtype=self.dtypes[v["dtype"]]) if buf else torch.empty(0, dtype=self.dtypes[v["dtype"]])
        return t.reshape(v["shape"])


def write(q: Quantized, model: Model, folder: Path, evidence: dict | None = None, extra: dict | None = None,
          shards: list[str] | None = None) -> dict:
    """Write weights.safetensors (or take `shards` already written there), recipe.yaml and
    manifest.json into an existing folder."""
    from safetensors.torch import save_file

    from .compare import environment

    tensors = Shards(folder, shards) if shards else \
        {k: v.detach().contiguous().clone() for k, v in module_tensors(q.module).items()}
    manifest = {
        "name": q.name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "content_hash": content_hash(tensors, q.recipe.to_dict(), model.sha, q.calibration),
        "base_model": {"path": model.path, "sha": model.sha, "task": getattr(model, "task", "sequence-classification"),
                       "labels": getattr(model, "labels", None), "max_length": getattr(model, "max_length", None)},
        "recipe": q.recipe.to_dict(), "calibration": q.calibration, "kernel": q.kernel,
        "quantized_layers": q.quantized_layers, "float_layers": q.float_layers, "float_ops": q.float_ops,
        "weight_bytes": q.weight_bytes, "quantize_seconds": q.seconds, "notes": q.notes,
        "environment": environment(), "evidence": evidence or {}, **(extra or {}),
        "weights_file": "weights.safetensors" if tensors and not shards else None,
    }
    if shards:
        manifest["weights_files"] = list(shards)
        tensors = {}                   # hashed: the shards' maps close
    if q.adapters:     # LoRA adapters in a file of their own, apart from the frozen base
        adapters = {k: tensors.pop(k) for k in [k for k in tensors if "lora_" in k]}
        save_file(adapters, str(folder / "adapters.safetensors"))
        manifest["adapters_file"] = "adapters.safetensors"
        (folder / "adapter_config.json").write_text(json.dumps(q.adapters, indent=2))
    if tensors and not shards:
        # safetensors refuses tensors that share memory; the copies above do not
        save_file(tensors, str(folder / "weights.safetensors"))
    if q.activation_profile:
        (folder / "activation_profile.json").write_text(json.dumps(q.activation_profile))
        manifest["activation_profile"] = "activation_profile.json"
    # enough to rebuild and run it: config, tokenizer, layer formats (and the graph, for PT2E)
    hf = model.module if isinstance(model, CausalLM) else getattr(model.module, "model", None)
    if getattr(hf, "config", None) is not None:
        hf.config.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    manifest["layers"] = layer_layout(q.module)
    manifest["model_kind"] = "causal-lm" if isinstance(model, CausalLM) else "sequence-classification"
    from .methods.pt2e import Compiled
    if isinstance(q.module, Compiled):
        manifest["program"] = save_program(q.module, model, folder / "program.pt2")
    if isinstance(model, CausalLM):
        manifest["adapters"] = q.adapters
        if q.extra.get("training"):
            manifest["training"] = q.extra["training"]
    (folder / "recipe.yaml").write_text(q.recipe.to_yaml())
    manifest["files"] = file_hashes(folder)       # checked by `registry check`, export and load
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an --out that exists (unless overwriting a quantgate artifact) or cannot be created: before any work."""
    from .report.files import check_out_path
    out = Path(out)
    if out.exists():
        require(overwrite, f"{out} already exists: choose another --out, or pass --overwrite")
        require(out.is_dir() and (out / "manifest.json").is_file(),
                f"{out} exists and is not a quantgate artifact: --overwrite replaces only an artifact "
                "quantgate saved; choose another --out")
    return check_out_path(out)


def save(q: Quantized, model: Model, out: str | Path, evidence: dict | None = None, overwrite: bool = False) -> Path:
    from .report.files import atomic_dir
    out = check_out(out, overwrite)
    with atomic_dir(out, replace=overwrite) as tmp:
        write(q, model, tmp, evidence)
    return out


# -- language models: the layer formats, and loading an artifact back --------

def save_program(compiled, model: Model, path: Path) -> str:
    """A converted PT2E graph as an ExportedProgram (batch dimension dynamic), for `load`."""
    import warnings
    ex = model.encode(["a", "b"])
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(compiled.gm, (ex["input_ids"], ex["attention_mask"]),
                                 dynamic_shapes=({0: batch}, {0: batch}), strict=False)
    torch.export.save(ep, str(path))
    return path.name


def layer_layout(module: torch.nn.Module) -> dict[str, dict]:
    """Each low-bit layer's format, enough to rebuild it empty and fill it from the weights file."""
    from .methods.nf4 import NF4Linear
    from .methods.weight_only import WeightOnlyLinear
    out = {}
    for name, m in module.named_modules():
        if type(m).__name__ == "Linear" and type(m).__module__.startswith("torch.ao.nn.quantized.dynamic"):
            out[name] = {"format": "dynamic-int8", "in": m.in_features, "out": m.out_features,
                         "bias": m.bias() is not None}
            continue
        if isinstance(m, WeightOnlyLinear):
            out[name] = {"format": "int", "in": m.in_features, "out": m.out_features, "bits": m.bits,
                         "group_size": m.group_size, "symmetric": m.symmetric, "bias": m.bias is not None}
        elif isinstance(m, NF4Linear):
            out[name] = {"format": "nf4", "in": m.in_features, "out": m.out_features, "block_size": m.block_size,
                         "double_quant": m.double_quant, "dq_block_size": m.dq_block_size, "bias": m.bias is not None}
    return out


def load_lm(path: str | Path, adapters: bool = True) -> CausalLM:
    """A saved quantized causal LM, ready to run and `generate`; outputs are
    bit-identical to the model that was saved. `adapters=False` loads a QLoRA
    artifact's quantized base alone (what peft's adapters are put on)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .methods.nf4 import NF4Linear
    from .methods.weight_only import WeightOnlyLinear, set_module

    p = Path(path)
    manifest = open_artifact(p)
    require(model_kind(manifest) == "causal-lm",
            f"{p} holds no language-model layer formats: it was not saved from a causal LM")
    hf_logging.set_verbosity_error()
    cfg = AutoConfig.from_pretrained(p, local_files_only=True)
    from accelerate import init_empty_weights

    from .methods.half import DTYPES
    recipe = manifest.get("recipe") or {}
    dtype = DTYPES[recipe["dtype"]] if recipe.get("method") == "half" else torch.float32
    with init_empty_weights():         # parameters on the meta device: no float model is made, then replaced
        hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    with_adapters = bool(manifest.get("adapters")) and adapters
    if with_adapters:                  # adapters first: the base layers then sit at '<name>.base_layer'
        from .methods.qlora import attach_adapters
        hf = attach_adapters(hf, manifest["adapters"])
    for name, spec in manifest["layers"].items():
        if not with_adapters:          # the base alone: its layers where the adapters' wrappers would be
            name = name.replace(".base_layer", "")
        with torch.device("meta"):     # its buffers too: the saved tensors are assigned, not copied in
            if spec["format"] == "int":
                new = WeightOnlyLinear.empty(spec["in"], spec["out"], spec["bits"], spec["group_size"],
                                             spec["symmetric"], spec["bias"])
            else:
                new = NF4Linear.empty(spec["in"], spec["out"], spec["block_size"], spec["double_quant"],
                                      spec["dq_block_size"], spec["bias"])
        set_module(hf, name, new)
    state = {}
    for f in manifest.get("weights_files") or [manifest["weights_file"]]:   # one file, or the streaming path's shards
        state.update(load_file(str(p / f)))
    if manifest.get("adapters_file") and with_adapters:
        state.update(load_file(str(p / manifest["adapters_file"])))
    elif manifest.get("adapters"):
        state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)   # the loaded tensors themselves
    tied = {k for k in missing if getattr(cfg, "tie_word_embeddings", False) and k.startswith("lm_head")}
    require(not unexpected and set(missing) == tied,
            f"{p}: the weights file does not match the layers (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {unexpected[:5]})")
    if tied:
        hf.tie_weights()
    empty = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    assert not empty, f"{p}: left on the meta device: {empty[:5]}"
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    base = manifest["base_model"]
    return CausalLM(hf.eval(), tok, str(p), manifest["content_hash"], info={"manifest": manifest, "base": base})


def _dynamic_linear(spec: dict, state: dict, name: str) -> torch.nn.Module:
    """A torch.ao dynamic int8 Linear from its stored int8 weight, per-channel scales and zero points."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    w = state.pop(f"{name}._packed_params.weight_int8")
    sc = state.pop(f"{name}._packed_params.weight_scales")
    zp = state.pop(f"{name}._packed_params.weight_zero_points")
    b = state.pop(f"{name}._packed_params.bias", None)
    if sc.numel() == 1:
        qw = torch._make_per_tensor_quantized_tensor(w, float(sc), int(zp))
    else:
        qw = torch._make_per_channel_quantized_tensor(w, sc.double(), zp.long(), 0)
    m = DynamicLinear(spec["in"], spec["out"], bias_=spec["bias"], dtype=torch.qint8)
    m.set_weight_bias(qw, b)
    for attr in ("scale", "zero_point"):      # its output qparams: unused by a dynamic linear, but in its state
        v = state.pop(f"{name}.{attr}", None)
        if v is not None:
            setattr(m, attr, v.item())
    return m


def model_kind(manifest: dict) -> str | None:
    """causal-lm or sequence-classification (artifacts saved before the field: LMs had `layers`)."""
    return manifest.get("model_kind") or ("causal-lm" if manifest.get("layers") is not None else None)


def load(path: str | Path) -> Model | CausalLM:
    """Any saved artifact, ready to run: a classifier as a `Model` ((input_ids,
    attention_mask) -> logits), a causal LM as a `CausalLM`; outputs are those of
    the model that was saved (bit-identical for every method)."""
    p = Path(path)
    manifest = open_artifact(p)
    if model_kind(manifest) == "causal-lm":
        return load_lm(p)
    require(manifest.get("layers") is not None or manifest.get("program"),
            f"{p} was saved by an older quantgate that did not record how to rebuild its model; quantize it again")
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .methods.pt2e import Compiled
    from .methods.weight_only import WeightOnlyLinear, set_module
    from .models import LogitsModel
    hf_logging.set_verbosity_error()
    base = manifest["base_model"]
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    labels = base.get("labels") or []
    max_length = base.get("max_length") or 128
    if manifest.get("program"):
        import warnings

        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the quantized_decomposed ops)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = torch.export.load(str(p / manifest["program"])).module()
        module = Compiled(gm)            # (an exported program's module has no train/eval switch)
    else:
        from safetensors.torch import load_file
        cfg = AutoConfig.from_pretrained(p, local_files_only=True)
        torch.manual_seed(0)
        module = LogitsModel(AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32))
        state = load_file(str(p / manifest["weights_file"]))
        dynamic = {}
        for name, spec in manifest["layers"].items():
            if spec["format"] == "dynamic-int8":      # put in after the float weights load: torch.ao's own
                dynamic[name] = _dynamic_linear(spec, state, name)      # state-dict loading wants a float weight
            elif spec["format"] == "int":
                set_module(module, name, WeightOnlyLinear.empty(spec["in"], spec["out"], spec["bits"],
                                                                spec["group_size"], spec["symmetric"], spec["bias"]))
            else:
                raise QuantgateError(f"{p}: layer {name} has format {spec['format']!r}, which a classifier does not use")
        missing, unexpected = module.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.rsplit(".", 1)[0] not in dynamic]
        require(not unexpected and not missing,
                f"{p}: the weights file does not match the layers (missing {missing[:5]}, unexpected {unexpected[:5]})")
        for name, new in dynamic.items():
            set_module(module, name, new)
        module.eval()
    return Model(module, tok, labels, str(p), manifest["content_hash"], max_length,
                 info={"manifest": manifest, "base": base})


def check_candidate(path: str | Path, model: Model | CausalLM) -> dict:
    """The manifest of an artifact to compare against `model`, refused in one line unless it was
    quantized from that very model (its base-model hash) and is of its kind. Reads no weights."""
    p = Path(path)
    require(p.is_dir(), f"--artifacts {p}: no such artifact folder; give a folder `quantize` or `lm quantize` wrote")
    m = read_manifest(p)
    base = m.get("base_model") or {}
    kind = model_kind(m) or "sequence-classification"
    require(kind == getattr(model, "task", "sequence-classification"),
            f"{p} holds a {kind} artifact; the model compared against is a {getattr(model, 'task', '')}")
    require(base.get("sha") == model.sha,
            f"{p} was quantized from another model (base hash {base.get('sha')}, {base.get('path')}) than "
            f"--model {model.path} (hash {model.sha}): compare it against the model it was made from")
    return m


def held_bytes(manifest: dict) -> int:
    """What a loaded artifact holds at run time: its weights and the packed layout each of its
    low-bit layers builds beside them for its kernel (methods/weight_only.packed_copy_bits)."""
    from .methods.weight_only import packed_copy_bits
    packed = sum(spec["in"] * spec["out"] * packed_copy_bits(spec["bits"], spec["group_size"], spec["symmetric"]) / 8
                 for spec in (manifest.get("layers") or {}).values() if spec.get("format") == "int")
    return int(manifest.get("weight_bytes") or 0) + int(packed)


def candidate(path: str | Path, model: Model | CausalLM, made_here: bool = False) -> Quantized:
    """A saved artifact as a comparison's candidate against `model`, the model it was made from:
    its module loaded bit-identical to what was saved, with the recipe, layers, kernel, notes and
    calibration fingerprint its manifest recorded (`made_here`: quantized by this comparison)."""
    from .recipes import Recipe
    m = check_candidate(path, model)
    loaded = load(path)
    return Quantized(loaded.module, Recipe.from_dict(m["recipe"]), list(m.get("quantized_layers") or []),
                     dict(m.get("float_layers") or {}), m.get("kernel") or "", seconds=m.get("quantize_seconds") or 0.0,
                     calibration=m.get("calibration"), weight_bytes=m.get("weight_bytes") or 0,
                     float_ops=dict(m.get("float_ops") or {}), adapters=m.get("adapters"),
                     notes=[*(m.get("notes") or []),
                            f"quantized from disk by this comparison (its baseline is the model as stored) into the "
                            f"artifact {path} (content hash {m['content_hash']}), scored and timed as loaded from there"
                            if made_here else
                            f"loaded from the artifact {path} (content hash {m['content_hash']}), "
                            f"quantized {m.get('created', '')}; not quantized in this comparison"],
                     extra={"artifact": {"path": str(path), "content_hash": m["content_hash"]}})
