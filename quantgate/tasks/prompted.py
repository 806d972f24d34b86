"""Prompted tasks for fine-tuned causal LMs: prompt -> answer, scored the way
the user's product scores it.

Data: a table (JSONL/CSV/Parquet) with a prompt column, a reference column,
optionally a choices column (a list of strings that holds the reference), and
any number of slice columns.

Metrics, per example, so a comparison can pair them:
- `exact_match`: the greedy answer (up to the first newline) equals the
  reference after normalisation (case, punctuation, articles, whitespace);
- `choice_accuracy`: with choices, the choice with the highest log-likelihood
  after the prompt is the reference (one forward pass per choice, no
  generation: how evaluation harnesses score multiple choice);
- `token_f1`: token-level F1 of answer against reference (free text).
Secondary, on the reference's tokens after the prompt (teacher-forced):
reference perplexity, KL(baseline || candidate) and the same-top-token rate.

Prompts longer than the model's context are truncated from the left, counted
in the report. `chat_template` wraps each prompt in the tokenizer's chat
template (as one user turn), never silently.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..errors import QuantgateError, require
from ..evaluate import metrics
from ..progress import progress
from . import metric
from .causal_lm import device


@dataclass
class PromptSet:
    prompts: list[str]
    references: list[str]
    ids: list[str]
    choices: list[list[str]] | None = None
    slices: dict[str, list[str]] = field(default_factory=dict)
    source: str = ""
    dropped: int = 0

    def __post_init__(self):
        n = len(self.prompts)
        require(n > 0, f"{self.source or 'prompted-task data'} holds no prompts")
        require(len(self.references) == n and len(self.ids) == n, "prompts, references and ids must have one length")
        for k, v in self.slices.items():
            require(len(v) == n, f"slice column {k!r} has {len(v)} values for {n} prompts")
        from ..data import length_slice
        self.slices.setdefault("length", length_slice(self.prompts))     # always a length slice, at the data's tertiles

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int) -> "PromptSet":
        k = min(n, len(self))
        return PromptSet(self.prompts[:k], self.references[:k], self.ids[:k],
                         None if self.choices is None else self.choices[:k],
                         {c: v[:k] for c, v in self.slices.items()}, f"{self.source}[:{n}]", self.dropped)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for i, (p, r) in enumerate(zip(self.prompts, self.references)):
            h.update(p.encode()); h.update(b"\x00"); h.update(r.encode()); h.update(b"\x01")
            if self.choices is not None:
                h.update("\x02".join(self.choices[i]).encode())
        return h.hexdigest()[:16]


def load_prompts(path: str | Path, prompt_col: str = "prompt", reference_col: str = "reference",
                 choices_col: str | None = None, slice_cols: list[str] | tuple[str, ...] = (),
                 id_col: str | None = None) -> PromptSet:
    """Read a prompted-task file; every problem is one clear error."""
    from ..data import read_frame
    p = Path(path)
    df = read_frame(p)
    require(len(df) > 0, f"{p} has no rows")
    cols = ", ".join(map(str, df.columns))
    for role, c in [("--prompt-col", prompt_col), ("--reference-col", reference_col)] \
            + ([("--choices-col", choices_col)] if choices_col else []) + [("--slice-col", s) for s in slice_cols] \
            + ([("--id-col", id_col)] if id_col else []):
        require(c in df.columns, f"{p} has no column {c!r} (named by {role}); its columns are: {cols}")
    rows = len(df)
    keep = df[prompt_col].notna() & df[reference_col].notna()
    keep &= df[prompt_col].astype(str).str.strip().astype(bool)
    df = df[keep]
    require(len(df) > 0, f"{p}: every row has an empty {prompt_col!r} or {reference_col!r}")
    refs = [str(r) for r in df[reference_col]]
    empty = [i for i, r in enumerate(refs) if not r.strip()]
    if empty:
        raise QuantgateError(f"{p}: row {df.index[empty[0]]} has an empty reference in {reference_col!r} "
                             f"({len(empty)} such rows); every prompt needs its expected answer")
    choices = None
    if choices_col:
        choices = []
        for row, c in zip(df.index, df[choices_col]):
            c = list(c) if isinstance(c, (list, tuple, np.ndarray)) else c
            require(isinstance(c, list) and len(c) >= 2 and all(isinstance(x, str) and x.strip() for x in c),
                    f"{p}: row {row}: {choices_col!r} must be a list of at least two non-empty strings, got {c!r}")
            choices.append(c)
        bad = [(row, r) for row, r, c in zip(df.index, refs, choices) if r not in c]
        if bad:
            raise QuantgateError(f"{p}: row {bad[0][0]}: the reference {bad[0][1]!r} is not one of its choices "
                                 f"({len(bad)} such rows)")
    dropped = rows - len(df)
    if dropped:
        import sys
        print(f"{p}: {dropped} of {rows} rows skipped (empty or missing {prompt_col!r})", file=sys.stderr)
    prompts = [str(x) for x in df[prompt_col]]
    ids = [str(v) for v in (df[id_col] if id_col else df.index)]
    slices = {s: [str(v) for v in df[s]] for s in slice_cols}
    return PromptSet(prompts, refs, ids, choices, slices, str(p), dropped)


# -- the BBC topic task (the bundled fine-tuned LM's task) ---------------------

TOPIC_TEMPLATE = "Article: {text}\nTopic:"
TOPIC_WORDS = 32        # words of the article's opening in each prompt


def topic_prompt(text: str, words: int = TOPIC_WORDS) -> str:
    return TOPIC_TEMPLATE.format(text=" ".join(text.split()[:words]))


def bbc_topic_prompts(ds, words: int = TOPIC_WORDS) -> PromptSet:
    """BBC articles as a prompted task: the article's opening -> its topic word;
    sliced by topic and by the article's length. Ordered by a hash of the id, so
    the first N prompts mix every topic."""
    order = sorted(range(len(ds)), key=lambda i: hashlib.sha256(ds.ids[i].encode()).hexdigest())
    return PromptSet([topic_prompt(ds.texts[i], words) for i in order], [ds.labels[i] for i in order],
                     [ds.ids[i] for i in order],
                     slices={"topic": [ds.labels[i] for i in order], "length": [ds.slices["length"][i] for i in order]},
                     source=f"{ds.source} as topic prompts ({words} words)")


# -- scoring ------------------------------------------------------------------

def normalize(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    t = text.lower()
    t = "".join(ch for ch in t if ch not in set(string.punctuation))
    t = re.sub(r"\b(a|an|the)\b", " ", t)
    return " ".join(t.split())


def token_f1(answer: str, reference: str) -> float:
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(a), common / len(r)
    return 2 * prec * rec / (prec + rec)


def _continuation(prompt: str, text: str) -> str:
    """The answer as it follows the prompt: one space between them unless either side has one."""
    return text if (not prompt or prompt[-1].isspace() or text[:1].isspace()) else " " + text


@dataclass
class Answers:
    answers: list[str]
    correct: np.ndarray          # [n] 0/1 on the primary metric (exact match or choice accuracy)
    f1: np.ndarray | None        # [n] token F1 (free text)
    ref_nll: np.ndarray          # [n] summed NLL of the reference tokens
    ref_tokens: np.ndarray       # [n] reference token counts
    kl: np.ndarray               # [n] mean KL(baseline || this) over reference tokens; 0 for the baseline
    same_top: np.ndarray         # [n] share of reference positions with the baseline's top token
    positions: list | None = None    # the baseline's next_token.Positions of every scored continuation
    rest_mass: float | None = None   # the baseline's: mean probability outside its top tokens (next_token)


class PromptedTask:
    kind = "prompted"
    changed_columns = [("id", "id"), ("prompt", "prompt"), ("reference", "reference"), ("baseline", "baseline answer"),
                       ("candidate", "candidate answer"), ("right", "right")]
    items = "prompts"
    batch_sizes = (1, 8)

    def __init__(self, lm, data: PromptSet, settings):
        s = self.s = settings
        self.lm, self.data, self.tok = lm, data, lm.tokenizer
        self.choice = data.choices is not None
        want = s.task_metric or ("choice_accuracy" if self.choice else "exact_match")
        allowed = ("choice_accuracy",) if self.choice else ("exact_match", "token_f1")
        require(want in allowed, f"task metric {want!r} does not fit this data: "
                                 f"{'with' if self.choice else 'without'} choices it is one of {', '.join(allowed)}")
        self.primary = want
        self.metrics = ([metric("choice_accuracy", "choice accuracy")] if self.choice else
                        [metric("exact_match", "exact match"), metric("token_f1", "token F1")])
        if want == "token_f1":
            self.metrics.reverse()
        self.metrics.append(metric("reference_perplexity", "reference perplexity", "value", lower_is_better=True))
        self.texts = self._texts()
        # the continuations' token ids, once: every model scores the same ones
        self.refs = [self._ids(r, t) for r, t in zip(data.references, self.texts)]
        self.choice_ids = None if not self.choice else [[(c, self._ids(c, t)) for c in cs]
                                                        for cs, t in zip(data.choices, self.texts)]
        longest = max(len(ids) for ids in ([i for cs in self.choice_ids for _, i in cs] if self.choice else self.refs))
        self.prompts, self.truncated = self._prompts(longest)
        self._continuation_room = max(s.answer_tokens, longest + 1)     # + the end-of-text token scored after it
        self.base: Answers | None = None

    # -- inputs ------------------------------------------------------------------
    def _texts(self) -> list[str]:
        """The prompts as the model sees them: wrapped in the tokenizer's chat template only when asked."""
        tok = self.tok
        if not self.s.chat_template:
            return list(self.data.prompts)
        require(getattr(tok, "chat_template", None),
                "--chat-template was given, but this model's tokenizer has no chat template")
        return [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in self.data.prompts]

    def _prompts(self, longest: int) -> tuple[list[list[int]], int]:
        """Token ids of every prompt, truncated from the left to leave room for a continuation of `longest` tokens."""
        tok, s = self.tok, self.s
        limit = getattr(self.lm.module.config, "max_position_embeddings", None) or 2048
        room = limit - max(s.answer_tokens, longest) - 1
        require(room >= 8, f"the model's context ({limit} tokens) leaves no room for a prompt and its answer")
        out, cut = [], 0
        templated = bool(s.chat_template)     # the template brings its own special tokens
        bos = getattr(tok, "bos_token_id", None)
        for t in self.texts:
            ids = tok(t, add_special_tokens=not templated)["input_ids"]
            if len(ids) > room:      # the start of the prompt goes, its BOS token (where one leads) stays
                lead = ids[:1] if bos is not None and ids[0] == bos else []
                ids, cut = lead + ids[len(ids) - room + len(lead):], cut + 1
            out.append(ids)
        return out, cut

    def longest(self) -> int:
        """The longest sequence a model runs here (a runtime's context must hold it)."""
        speed = len(self.tok(self.texts[0])["input_ids"]) + self.s.decode_steps + 1
        return max(max(map(len, self.prompts)) + self._continuation_room, speed)

    def describe(self) -> dict:
        d = self.data
        generate = ("llama.cpp's greedy decoding, one prompt at a time" if self.s.serve_in == "llama.cpp" else
                    "transformers generate, batched with left padding")
        answers = ("log-likelihood of each choice" if self.choice else
                   f"greedy (read off the reference's teacher-forced pass where greedy follows it; else {generate})")
        about = (f"{len(d)} prompts of {d.source}; answers: {answers}"
                 + (f"; {self.truncated} prompt(s) truncated from the left to fit the context" if self.truncated else "")
                 + ("; chat template applied" if self.s.chat_template else ""))
        return {"kind": self.kind, "primary": self.primary, "metrics": self.metrics, "items": self.items,
                "changed_columns": self.changed_columns, "changed_title": "Changed answers", "latency_unit": "token",
                "token_evidence": True, "about": about,
                "data": {"source": d.source, "n": len(d), "fingerprint": d.fingerprint(), "dropped": d.dropped,
                         "truncated": self.truncated, "chat_template": bool(self.s.chat_template),
                         "answer_tokens": self.s.answer_tokens, "choices": self.choice,
                         "answers": answers,
                         "slices": {k: sorted(set(v)) for k, v in d.slices.items()}}}

    # -- model runs ----------------------------------------------------------------
    @torch.inference_mode()
    def _teacher_forced(self, module, pairs: list[tuple[list[int], list[int]]], desc: str) -> list:
        """next_token.Positions at each continuation token, for (prompt ids, continuation ids) pairs:
        the baseline's own, or a candidate's read at the baseline's top tokens."""
        from ..evaluate import next_token
        bases = None if self.base is None else self.base.positions
        out, bs = [], self.s.eval_batch_size
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        dev = device(module)
        with progress(total=len(pairs), desc=desc, enabled=self.s.verbose) as bar:
            for i in range(0, len(pairs), bs):
                chunk = pairs[i:i + bs]
                seqs = [p + c for p, c in chunk]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), pad, dtype=torch.long)
                am = torch.zeros_like(ids)
                for j, sq in enumerate(seqs):
                    ids[j, :len(sq)] = torch.tensor(sq)
                    am[j, :len(sq)] = 1
                rows = [(j, len(p) - 1, len(c)) for j, (p, c) in enumerate(chunk)]
                out.extend(next_token.score(module, ids.to(dev), am.to(dev), rows, [torch.tensor(c) for _, c in chunk],
                                            None if bases is None else bases[i:i + bs]))
                bar.update(len(chunk))
        return out

    @torch.inference_mode()
    def _generate(self, module, which: list[int], desc: str) -> dict[int, str]:
        """Greedy answers of the prompts `which`: transformers' generate, batched with left padding."""
        tok, bs = self.tok, self.s.eval_batch_size
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        dev = device(module)
        answers = {}
        with progress(total=len(which), desc=desc, enabled=self.s.verbose) as bar:
            for i in range(0, len(which), bs):
                idx = which[i:i + bs]
                chunk = [self.prompts[k] for k in idx]
                width = max(map(len, chunk))
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                am = torch.zeros_like(ids)
                for j, p in enumerate(chunk):           # left padding: every prompt ends at the last column
                    ids[j, width - len(p):] = torch.tensor(p)
                    am[j, width - len(p):] = 1
                gen = module.generate(input_ids=ids.to(dev), attention_mask=am.to(dev), do_sample=False,
                                      max_new_tokens=self.s.answer_tokens, pad_token_id=pad)[:, width:]
                for k, row in zip(idx, gen.cpu().tolist()):
                    answers[k] = self._answer(row)
                bar.update(len(chunk))
        return answers

    def _answer(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).split("\n")[0].strip()

    @cached_property
    def stops(self) -> set[int]:
        """Tokens that end a greedy answer: end of text, or a token that starts a new line."""
        eos = self.tok.eos_token_id
        ids = {eos} if isinstance(eos, int) else set(eos or [])
        return ids | {i for i in range(len(self.tok)) if self.tok.decode([i]).startswith("\n")}

    def _along_reference(self, lps: list, refs: list[list[int]]) -> dict[int, str]:
        """Greedy answers read off the teacher-forced pass over prompt + reference + end of text:
        where every greedy token equals the reference's and the next one ends the answer (or the
        answer-length limit is reached), greedy decoding would have produced the reference. The
        others are generated."""
        out, limit, stops = {}, self.s.answer_tokens, self.stops
        for i, (lp, r) in enumerate(zip(lps, refs)):
            k = min(len(r), limit)
            if lp.top1[:k].tolist() == r[:k] and (k == limit or int(lp.top1[k]) in stops):
                out[i] = self._answer(r[:k])
        return out

    def _ids(self, text: str, prompt: str) -> list[int]:
        return self.tok(_continuation(prompt, text), add_special_tokens=False)["input_ids"]

    def score(self, module, name: str) -> Answers:
        from ..evaluate import next_token
        d, refs = self.data, self.refs
        if self.choice:
            flat = [(i, c, ids) for i, cs in enumerate(self.choice_ids) for c, ids in cs]
            lps = self._teacher_forced(module, [(self.prompts[i], ids) for i, _, ids in flat], f"choices {name}")
            by: dict[int, list[tuple[float, str, int]]] = {}
            for k, ((i, c, ids), lp) in enumerate(zip(flat, lps)):
                by.setdefault(i, []).append((float(lp.target.sum()), c, k))
            answers = [max(by[i], key=lambda t: t[0])[1] for i in range(len(d))]
            at = [next(k for _, c, k in by[i] if c == d.references[i]) for i in range(len(d))]
            ref_lp = [lps[k] for k in at]
            correct = np.array([a == r for a, r in zip(answers, d.references)], dtype=float)
            f1 = None
        else:
            eos = self.tok.eos_token_id if isinstance(self.tok.eos_token_id, int) else 0
            lps = self._teacher_forced(module, [(p, r + [eos]) for p, r in zip(self.prompts, refs)], f"references {name}")
            at = list(range(len(d)))
            ref_lp = [lp[:len(r)] for lp, r in zip(lps, refs)]
            found = self._along_reference(lps, refs)
            found |= self._generate(module, [i for i in range(len(d)) if i not in found], f"answers {name}")
            answers = [found[i] for i in range(len(d))]
            f1 = np.array([token_f1(a, r) for a, r in zip(answers, d.references)])
            correct = np.array([normalize(a) == normalize(r) for a, r in zip(answers, d.references)], dtype=float)
        nll = np.array([-float(lp.target.sum()) for lp in ref_lp])
        counts = np.array([len(r) for r in refs], dtype=float)
        if self.base is None:
            r = Answers(answers, correct, f1, nll, counts, np.zeros(len(d)), np.ones(len(d)), positions=lps)
            r.rest_mass = float(torch.cat([next_token.rest_mass(lp) for lp in ref_lp]).mean())
            self.base = r
            return r
        base = [self.base.positions[k][:len(c)] for k, c in zip(at, ref_lp)]
        kl = np.array([float(next_token.kl(b, c).mean()) for b, c in zip(base, ref_lp)])
        same = np.array([float((b.top1 == c.top1).float().mean()) for b, c in zip(base, ref_lp)])
        return Answers(answers, correct, f1, nll, counts, kl, same)

    # -- results -------------------------------------------------------------------
    def _scores(self, r: Answers) -> dict[str, np.ndarray]:
        out = {"choice_accuracy" if self.choice else "exact_match": r.correct}
        if r.f1 is not None:
            out["token_f1"] = r.f1
        return out

    def summary(self, r: Answers) -> dict:
        out = {k: float(v.mean()) for k, v in self._scores(r).items()}
        out["reference_perplexity"] = math.exp(r.ref_nll.sum() / r.ref_tokens.sum())
        if r.rest_mass is not None:
            out["kl_rest_mass"] = r.rest_mass
        return out

    def compare(self, base: Answers, cand: Answers) -> dict:
        s, d = self.s, self.data
        sb, sc = self._scores(base), self._scores(cand)
        m = {k: metrics.paired_mean(sb[k], sc[k], s.n_boot, s.seed) for k in sb}
        m["reference_perplexity"] = metrics.perplexity_ratio(base.ref_nll, cand.ref_nll, base.ref_tokens, s.n_boot, s.seed)
        slices = {}
        for col, values in d.slices.items():
            values = np.asarray(values)
            rows = []
            for v in sorted(set(values.tolist())):
                mask = values == v
                rows.append({"value": v, "n": int(mask.sum()),
                             **{k: metrics.paired_mean(sb[k][mask], sc[k][mask], s.n_boot, s.seed) for k in sb}})
            slices[col] = rows
        y = np.ones(len(d), dtype=int)
        changed = []
        for i in np.flatnonzero(np.array(base.answers, dtype=object) != np.array(cand.answers, dtype=object)):
            rb, rc = bool(base.correct[i]), bool(cand.correct[i])
            changed.append({"id": d.ids[i], "prompt": d.prompts[i][-400:], "reference": d.references[i],
                            "baseline": base.answers[i], "candidate": cand.answers[i],
                            "baseline_correct": rb, "candidate_correct": rc,
                            "right": "both" if rb and rc else "baseline" if rb else "candidate" if rc else "neither",
                            "slices": {k: v[i] for k, v in d.slices.items()}})
        order = {"baseline": 0, "candidate": 1, "neither": 2, "both": 3}
        changed.sort(key=lambda e: order[e["right"]])
        return {"metrics": m, "mcnemar": metrics.mcnemar(y, base.correct.astype(int), cand.correct.astype(int)),
                "slices": slices, "agreement": float(np.mean([a == b for a, b in zip(base.answers, cand.answers)])),
                "mean_kl": float(cand.kl.mean()), "same_top": float(cand.same_top.mean()),
                "changed": changed[: s.max_changed], "n_changed": len(changed)}

    def speed(self, modules: dict, share: float = 1.0) -> dict[str, dict]:
        from .causal_lm import decode_speed
        s = self.s
        return decode_speed(modules, self.tok, self.texts[0], s.batch_sizes, s.decode_steps,
                            max(1, round(s.decode_rounds * share)), s.runtime)

    def memory_probe(self):
        from .causal_lm import decode_memory_probe
        return decode_memory_probe(self.tok, self.texts[0], max(self.s.batch_sizes), self.s.runtime)
