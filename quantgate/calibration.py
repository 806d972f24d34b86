"""Calibration data: checked, tokenized and fingerprinted. The one owner of
calibration inputs for every method.

- classifiers: the first `num_samples` examples at the model's fixed length
  (`prepare_calibration`);
- causal LMs: consecutive token windows of the calibration text (`lm_windows`),
  also used for QLoRA's training windows. Held-out evaluation windows are cut
  the same way (`cut_windows`): every window starts with the beginning-of-
  sequence token when the tokenizer's own plain encode puts one first (`bos_id`),
  since families trained that way (Gemma's, Llama 2/3's) use it as an attention
  sink and score far worse without it.

Both fingerprints share one schema: a content hash of the token ids the model
actually saw (so a different tokenizer or length is a different fingerprint),
the tokenizer's identity, the count asked for and used, the source, and the
slices the samples cover (classifiers) or the tokens and texts used (LMs)."""

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


def bos_id(tokenizer) -> int | None:
    """The token a plain encode puts first (the beginning-of-sequence token),
    or None where the tokenizer adds none (SmolLM2's, GPT-2's)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


def token_stream(tokenizer, texts: list[str], limit: int | None = None) -> torch.Tensor:
    """All texts as one token stream, separated by the end-of-text token (tokenizing
    stops once `limit` tokens are there: calibration needs only the first ones)."""
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        if limit is not None and len(ids) >= limit:
            break
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
    return torch.tensor(ids, dtype=torch.long)


def cut_windows(stream: torch.Tensor, length: int, n: int, bos: int | None) -> torch.Tensor:
    """n consecutive windows of `length` tokens from the stream, each led by `bos` when
    there is one (then length - 1 tokens of text follow it)."""
    body = length - (bos is not None)
    w = stream[:n * body].view(n, body)
    return w if bos is None else torch.cat([torch.full((n, 1), bos, dtype=w.dtype), w], dim=1)


def lm_windows(tokenizer, data: Dataset | list[str] | None, num_samples: int, seq_len: int,
               where: str = "calibration data") -> tuple[torch.Tensor, dict]:
    """[num_samples, seq_len] consecutive windows of the text (a Dataset or a list of texts), and their fingerprint."""
    texts = None if data is None else list(data.texts if isinstance(data, Dataset) else data)
    require(texts is not None and len(texts) > 0 and any(t.strip() for t in texts),
            f"{where} is empty: GPTQ chooses its roundings on calibration text; give --calibration FILE")
    bos = bos_id(tokenizer)
    body = seq_len - (bos is not None)
    need = num_samples * body
    stream = token_stream(tokenizer, texts, limit=need)
    require(len(stream) >= need,
            f"{where} is too short: {len(texts)} texts give {len(stream):,} tokens, but {num_samples} samples x "
            f"{seq_len} tokens need {need:,}; give more text, or lower num_samples or seq_len "
            f"(at most {len(stream) // body} samples of {seq_len} tokens fit)")
    windows = cut_windows(stream, seq_len, num_samples, bos)
    fp = {"hash": hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16], "count": num_samples,
          "requested": num_samples, "tokenizer": tokenizer_identity(tokenizer), "max_length": seq_len,
          "source": getattr(data, "source", "texts"), "tokens": int(windows.numel()), "texts": len(texts),
          "bos": bos}
    return windows, fp


def batches(enc: dict[str, torch.Tensor], batch_size: int):
    n = enc["input_ids"].shape[0]
    for i in range(0, n, batch_size):
        yield enc["input_ids"][i:i + batch_size], enc["attention_mask"][i:i + batch_size]
