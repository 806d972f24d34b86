"""Loading a fine-tuned classifier: a Hugging Face directory or a plain module."""

from __future__ import annotations

import hashlib
import json
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


def hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


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
