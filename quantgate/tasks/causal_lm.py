"""Causal language models: text to token windows, and what a comparison
measures on them.

- perplexity over held-out text in fixed windows (context length and stride
  stated; each window scored on its own, no carried-over context)
- per window, against the baseline: KL(baseline || candidate) of the
  next-token distribution and the share of positions with the same top token
- a greedy generation diff over prompts: which prompts changed, the first
  differing token, both outputs
- decode latency per token (p50/p95/p99) and tokens/s at each batch size, and
  time to first token, with a KV cache, all models interleaved; generation and
  decode run quantgate's decoder (decoder.py) where the architecture allows,
  else transformers' generate, and say which
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import require
from ..evaluate import metrics
from ..progress import progress


def eval_windows(tokenizer, texts: list[str], context: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `context` tokens of held-out text (the last partial
    window is dropped), each led by BOS where the tokenizer adds one (`calibration.bos_id`)."""
    from ..calibration import bos_id, cut_windows, token_stream
    require(texts, "evaluation text is empty")
    stream = token_stream(tokenizer, texts)
    bos = bos_id(tokenizer)
    n = len(stream) // (context - (bos is not None))
    require(n >= 1, f"evaluation text has {len(stream)} tokens, fewer than one window of {context}")
    if max_windows:
        n = min(n, max_windows)
    return cut_windows(stream, context, n, bos)


@dataclass
class WindowScores:
    nll: np.ndarray          # [windows] mean negative log-likelihood per token
    kl: np.ndarray           # [windows] mean KL(baseline || model) per position; 0 for the baseline
    same_top: np.ndarray     # [windows] share of positions with the baseline's top token
    positions: list | None = None    # the baseline's next_token.Positions per window (kept instead of the model)
    rest_mass: float | None = None   # the baseline's mean probability outside its top tokens


def score_windows(module, windows: torch.Tensor, verbose: bool = True, base: WindowScores | None = None,
                  desc: str = "perplexity windows") -> WindowScores:
    """A model on every window, one at a time, each window's distributions reduced at once
    (evaluate/next_token.py). The baseline (base None) keeps its summaries; a candidate is read
    against them: one forward pass per window, and the baseline model is not run again."""
    from ..evaluate import next_token
    n, length = windows.shape
    nll, kl, same, kept = [], [], [], []
    with progress(total=n, desc=desc, enabled=verbose) as bar:
        for i in range(n):
            ids = windows[i:i + 1].to(device(module))
            b = None if base is None else [base.positions[i]]
            p = next_token.score(module, ids, None, [(0, 0, length - 1)], [windows[i, 1:]], b)[0]
            nll.append(-float(p.target.mean()))
            if base is None:
                kept.append(p)
            else:
                kl.append(float(next_token.kl(b[0], p).mean()))
                same.append(float((b[0].top1 == p.top1).float().mean()))
            bar.update(1)
    if base is None:
        rest = float(torch.cat([next_token.rest_mass(p) for p in kept]).mean())
        return WindowScores(np.array(nll), np.zeros(n), np.ones(n), kept, rest)
    return WindowScores(np.array(nll), np.array(kl), np.array(same))


# -- generation ---------------------------------------------------------------

def prompts_from(texts: list[str], n: int, words: int = 24) -> list[str]:
    """The opening words of n held-out texts: prompts the model continues."""
    out = []
    for t in texts:
        w = t.split()
        if len(w) >= words:
            out.append(" ".join(w[:words]))
        if len(out) == n:
            break
    return out


def device(module) -> torch.device:
    """Where a model's inputs go: its parameters' device (CPU for a model served by another runtime)."""
    p = next(module.parameters(), None)
    return torch.device("cpu") if p is None else p.device


@torch.inference_mode()
def runtime(module, requested: str = "auto") -> str:
    """Which decode loop runs this model: quantgate's decoder where the
    architecture allows ("auto"), else transformers' own; a model served by
    another runtime (export/llamacpp.py) runs its own."""
    from ..decoder import HF_RUNTIME, RUNTIME, RUNTIMES, unsupported
    require(requested in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    if hasattr(module, "runtime_name"):
        return module.runtime_name
    if requested == "transformers":
        return HF_RUNTIME
    why = unsupported(module)
    require(not (why and requested == "quantgate"), f"the quantgate decoder cannot run this model: {why}")
    return HF_RUNTIME if why else RUNTIME


def greedy(module, tokenizer, prompts: list[str], max_new_tokens: int, use: str = "auto") -> list[list[int]]:
    """Greedy continuations (new token ids), one prompt at a time: no padding to differ by."""
    from ..decoder import RUNTIME, Decoder, eos_ids
    dec = Decoder(module) if runtime(module, use) == RUNTIME else None
    outs = []
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt")["input_ids"]
        if dec is not None:
            outs.append(dec.generate(ids, max_new_tokens, eos_ids(module))[0].tolist())
            continue
        ids = ids.to(device(module))
        gen = module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        outs.append(gen[0, ids.shape[1]:].tolist())
    return outs


def generation_diff(tokenizer, prompts: list[str], base: list[list[int]], cand: list[list[int]]) -> list[dict]:
    """Every prompt whose greedy continuation changed: the first differing token and both outputs."""
    rows = []
    for i, (p, b, c) in enumerate(zip(prompts, base, cand)):
        if b == c:
            continue
        k = next((j for j, (x, y) in enumerate(zip(b, c)) if x != y), min(len(b), len(c)))
        rows.append({"id": str(i), "prompt": p, "first_diff": k,
                     "baseline_token": tokenizer.decode(b[k:k + 1]), "candidate_token": tokenizer.decode(c[k:k + 1]),
                     "baseline": tokenizer.decode(b), "candidate": tokenizer.decode(c)})
    return rows


# -- decode speed -------------------------------------------------------------

class _TransformersSteps:
    """transformers' cached forward behind the decoder's prefill/step interface."""

    def __init__(self, module):
        self.module, self.cache = module, None

    def prefill(self, ids: torch.Tensor, max_len: int) -> torch.Tensor:
        out = self.module(input_ids=ids, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.module(input_ids=tokens, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1]


@torch.inference_mode()
def _decode(module, ids: torch.Tensor, steps: int, use: str = "auto") -> tuple[float, list[float]]:
    """Time to first token (prefill + its sampling) and per-token decode latencies, ms."""
    from ..decoder import RUNTIME, Decoder
    if hasattr(module, "timed_decode"):          # another runtime's process: timed there
        return module.timed_decode(ids, steps)
    loop = Decoder(module) if runtime(module, use) == RUNTIME else _TransformersSteps(module)
    t0 = time.perf_counter()
    nxt = loop.prefill(ids, ids.shape[1] + steps + 1).argmax(-1, keepdim=True)
    ttft, lat = (time.perf_counter() - t0) * 1e3, []
    for _ in range(steps):
        t = time.perf_counter()
        nxt = loop.step(nxt).argmax(-1, keepdim=True)
        lat.append((time.perf_counter() - t) * 1e3)
    return ttft, lat


def decode_memory_probe(tokenizer, prompt: str, batch: int, use: str = "auto"):
    """(call(module), what it is): a prefill and a few decode steps at the largest decode batch
    size, whose working memory (KV cache, logits, dequantized weights) `perf.own_memory` measures."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].expand(batch, -1).contiguous()

    def call(module):
        _decode(module, ids, 4, use)
    return call, f"a prefill of {ids.shape[1]} tokens and 4 decode steps at batch {batch}"


def decode_speed(modules: dict[str, torch.nn.Module], tokenizer, prompt: str, batch_sizes=(1, 8),
                 steps: int = 32, rounds: int = 3, use: str | dict[str, str] = "auto") -> dict[str, dict]:
    """Per model and batch size: decode latency per token p50/p95/p99, tokens/s
    (batch / median latency), and time to first token (median), measured
    round-robin so load from elsewhere hits every model alike. `use` picks the
    decode loop (one for all, or per model name); each result says which ran."""
    from ..evaluate.perf import percentiles
    uses = use if isinstance(use, dict) else {k: use for k in modules}
    ids1 = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = {k: {"batch_sizes": {}, "runtime": runtime(m, uses.get(k, "auto"))} for k, m in modules.items()}
    for bs in batch_sizes:
        ids = ids1.expand(bs, -1).contiguous()
        for k, m in modules.items():
            _decode(m, ids, 2, uses.get(k, "auto"))               # warm-up
        lat = {k: [] for k in modules}
        ttft = {k: [] for k in modules}
        for _ in range(rounds):
            for k, m in modules.items():
                t, per = _decode(m, ids, steps, uses.get(k, "auto"))
                ttft[k].append(t)
                lat[k].extend(per)
        for k in modules:
            out[k]["batch_sizes"][str(bs)] = percentiles(lat[k], bs, ttft[k]) | {"prompt_tokens": int(ids.shape[1])}
    return out


# -- the task -----------------------------------------------------------------

@dataclass
class TextResults:
    windows: WindowScores
    generations: list[list[int]]


class LanguageModelling:
    """A causal LM on raw held-out text: perplexity over fixed windows (paired
    bootstrap over windows), KL and same-top-token rate against the baseline,
    the greedy generation diff over prompts, decode speed."""

    kind = "language-modelling"
    primary = "perplexity"
    metrics = [{"name": "perplexity", "label": "perplexity", "kind": "value", "lower_is_better": True}]
    changed_columns = [("prompt", "prompt"), ("first_diff", "first different token"), ("baseline", "baseline"),
                       ("candidate", "candidate")]
    items = "windows"
    batch_sizes = (1, 8)

    def __init__(self, lm, texts: list[str], settings, source: str = ""):
        s = self.s = settings
        self.lm, self.source = lm, source or "text"
        self.windows = eval_windows(lm.tokenizer, texts, s.context, s.max_windows)
        self.prompts = prompts_from(texts, s.n_prompts)
        self.speed_prompt = self.prompts[0] if self.prompts else texts[0][:200]
        self.base: TextResults | None = None

    def longest(self) -> int:
        """The longest sequence a model runs here (a runtime's context must hold it)."""
        n = lambda p: len(self.lm.tokenizer(p)["input_ids"])  # noqa: E731
        return max([int(self.windows.shape[1]), n(self.speed_prompt) + self.s.decode_steps + 1]
                   + [n(p) + self.s.new_tokens for p in self.prompts])

    def describe(self) -> dict:
        import hashlib

        from ..calibration import bos_id
        w = self.windows
        bos = bos_id(self.lm.tokenizer)
        lead = "" if bos is None else f", each led by the BOS token {self.lm.tokenizer.convert_ids_to_tokens(bos)!r}"
        return {"kind": self.kind, "primary": self.primary, "metrics": self.metrics, "items": self.items,
                "changed_columns": self.changed_columns, "changed_title": "Changed generations", "latency_unit": "token",
                "token_evidence": True,
                "about": f"perplexity on {int(w.shape[0])} windows of {self.s.context} tokens (stride {self.s.context}, "
                         f"no carried context{lead}), {len(self.prompts)} prompts x {self.s.new_tokens} greedy tokens",
                "data": {"source": self.source, "n": int(w.shape[0]), "tokens": int(w.numel()),
                         "context": self.s.context, "stride": self.s.context, "bos": bos,
                         "fingerprint": hashlib.sha256(w.numpy().tobytes()).hexdigest()[:16],
                         "prompts": len(self.prompts), "new_tokens": self.s.new_tokens, "slices": {}}}

    def score(self, module, name: str) -> TextResults:
        sc = score_windows(module, self.windows, self.s.verbose, None if self.base is None else self.base.windows,
                           f"perplexity windows {name}")
        gens = greedy(module, self.lm.tokenizer, self.prompts, self.s.new_tokens, self.s.runtime)
        r = TextResults(sc, gens)
        if self.base is None:
            self.base = r
        return r

    def summary(self, r: TextResults) -> dict:
        out = {"perplexity": float(np.exp(r.windows.nll.mean()))}
        if r.windows.rest_mass is not None:
            out["kl_rest_mass"] = r.windows.rest_mass
        return out

    def compare(self, base: TextResults, cand: TextResults) -> dict:
        diffs = generation_diff(self.lm.tokenizer, self.prompts, base.generations, cand.generations)
        ppl = metrics.perplexity_ratio(base.windows.nll, cand.windows.nll, None, self.s.n_boot, self.s.seed)
        return {"metrics": {"perplexity": ppl},
                "mcnemar": {}, "slices": {}, "agreement": float(cand.windows.same_top.mean()),
                "mean_kl": float(cand.windows.kl.mean()), "changed": diffs, "n_changed": len(diffs)}

    def speed(self, modules: dict, share: float = 1.0) -> dict[str, dict]:
        s = self.s
        return decode_speed(modules, self.lm.tokenizer, self.speed_prompt, s.batch_sizes, s.decode_steps,
                            max(1, round(s.decode_rounds * share)), s.runtime)

    def memory_probe(self):
        return decode_memory_probe(self.lm.tokenizer, self.speed_prompt, max(self.s.batch_sizes), self.s.runtime)
