"""Calibration data: checked, tokenized and fingerprinted.

The fingerprint is a content hash of the token ids the model actually saw (so a
different tokenizer or max length is a different fingerprint), with the
tokenizer's identity, the sample count and the slices the samples cover."""

from __future__ import annotations

import hashlib
from collections import Counter

import torch

from .data import Dataset
from .errors import QuantgateError, require


def tokenizer_identity(tok) -> str:
    h = hashlib.sha256()
    h.update(type(tok).__name__.encode())
    vocab = tok.get_vocab()
    for k in sorted(vocab):
        h.update(k.encode()); h.update(str(vocab[k]).encode())
    return f"{type(tok).__name__}:{len(vocab)}:{h.hexdigest()[:12]}"


def prepare_calibration(model, data: Dataset | None, num_samples: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Token tensors for the first `num_samples` examples, and their fingerprint."""
    if data is None:
        raise QuantgateError("this recipe needs calibration data: pass --calibration FILE (or use the default split)")
    if not isinstance(data, Dataset):
        raise QuantgateError(f"calibration data must be a quantgate Dataset of texts, got {type(data).__name__}")
    require(len(data) > 0, "calibration data is empty: give at least one example (a few hundred are recommended)")
    sub = data.head(num_samples)
    enc = model.encode(sub.texts)
    h = hashlib.sha256()
    h.update(enc["input_ids"].numpy().tobytes())
    h.update(enc["attention_mask"].numpy().tobytes())
    fp = {
        "hash": h.hexdigest()[:16],
        "count": len(sub),
        "requested": num_samples,
        "tokenizer": tokenizer_identity(model.tokenizer),
        "max_length": model.max_length,
        "source": sub.source,
        "slices": {k: dict(sorted(Counter(v).items())) for k, v in sub.slices.items()},
    }
    return enc, fp


def batches(enc: dict[str, torch.Tensor], batch_size: int):
    n = enc["input_ids"].shape[0]
    for i in range(0, n, batch_size):
        yield enc["input_ids"][i:i + batch_size], enc["attention_mask"][i:i + batch_size]
