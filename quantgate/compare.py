"""Comparison: the baseline and each candidate on the same examples.

    comparison = compare(model, eval_data, recipes, calibration)

For every candidate: accuracy and macro-F1 deltas with paired 95% intervals,
overall and per slice; McNemar's test; the changed examples; latency
percentiles and throughput per batch size; weight bytes and peak memory; time
to quantize; which layers stayed in float and why."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .data import Dataset
from .errors import require
from .evaluate import metrics, perf
from .methods.common import Quantized, tensor_bytes
from .models import Model
from .quantize import quantize
from .recipes import Recipe
from .tasks.classification import Predictions, predict


@dataclass
class Settings:
    batch_sizes: tuple[int, ...] = (1, 32)
    eval_batch_size: int = 32
    n_boot: int = 2000
    seed: int = 0
    perf_budget_s: float = 5.0
    perf_min_reps: int = 10
    max_changed: int = 200
    verbose: bool = True

    def __post_init__(self):
        self.batch_sizes = tuple(self.batch_sizes)
        require(self.batch_sizes and all(isinstance(b, int) and b > 0 for b in self.batch_sizes),
                f"batch sizes must be positive integers, got {self.batch_sizes}")


@dataclass
class Candidate:
    name: str
    recipe: dict
    kernel: str
    quantized_layers: list[str]
    float_layers: dict[str, str]  # linear module -> why it stayed in float
    float_ops: dict[str, str]     # other operator kinds left in float -> why
    notes: list[str]
    quantize_seconds: float
    calibration: dict | None
    weight_bytes: int
    metrics: dict                 # metric -> {baseline, candidate, delta, ci_low, ci_high}
    mcnemar: dict
    slices: dict                  # slice column -> rows
    agreement: float              # share of examples with the same predicted class
    mean_kl: float                # mean KL(baseline || candidate) of the class distributions
    changed: list[dict]
    n_changed: int
    perf: dict
    extra: dict = field(default_factory=dict)   # method-specific results, e.g. QAT's recovery share


@dataclass
class Comparison:
    model: dict
    data: dict
    settings: dict
    baseline: dict
    candidates: list[Candidate] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    created: str = ""
    calibration_checks: dict | None = None   # sufficiency, coverage, missing slices, outlier channels
    plan: dict | None = None                 # quantgate auto: the path taken and the choice

    def to_dict(self) -> dict:
        return asdict(self)

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(name)


def environment() -> dict:
    import importlib.metadata as md
    import transformers

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None
    return {"torch": torch.__version__, "torchao": version("torchao"), "peft": version("peft"),
            "transformers": transformers.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "processor": _cpu_name(),
            "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def changed_examples(data: Dataset, model: Model, base: Predictions, cand: Predictions, limit: int) -> list[dict]:
    """Every example whose predicted class changed, largest probability shift first."""
    pb, pc = base.pred, cand.pred
    idx = np.flatnonzero(pb != pc)
    shift = np.abs(base.probs[idx] - cand.probs[idx]).sum(axis=1)
    rows = []
    for i in idx[np.argsort(-shift)][:limit]:
        rows.append({
            "id": data.ids[i], "text": data.texts[i][:400], "label": data.labels[i],
            "baseline": model.labels[pb[i]], "baseline_prob": float(base.probs[i, pb[i]]),
            "candidate": model.labels[pc[i]], "candidate_prob": float(cand.probs[i, pc[i]]),
            "slices": {k: v[i] for k, v in data.slices.items()},
        })
    return rows


def mean_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


def evaluate_candidate(model: Model, q: Quantized, data: Dataset, base: Predictions, s: Settings) -> Candidate:
    with perf.RssSampler() as mem:
        cand = predict(q.module, model, data, s.eval_batch_size, s.verbose, desc=f"evaluate {q.name}")
    y, pb, pc = base.labels, base.pred, cand.pred
    pf = mem.summary()
    return Candidate(
        name=q.name, recipe=q.recipe.to_dict(), kernel=q.kernel, quantized_layers=q.quantized_layers,
        float_layers=q.float_layers, float_ops=q.float_ops, notes=q.notes, quantize_seconds=q.seconds, calibration=q.calibration,
        weight_bytes=q.weight_bytes, metrics=metrics.paired_bootstrap(y, pb, pc, s.n_boot, s.seed),
        mcnemar=metrics.mcnemar(y, pb, pc), slices=metrics.slice_deltas(y, pb, pc, data.slices, s.n_boot, s.seed),
        agreement=float((pb == pc).mean()), mean_kl=mean_kl(base.probs, cand.probs),
        changed=changed_examples(data, model, base, cand, s.max_changed), n_changed=int((pb != pc).sum()),
        perf=pf)


def qat_recovery(model: Model, q: Quantized, data: Dataset, calibration: Dataset | None, base: Predictions,
                 cand: Candidate, s: Settings) -> dict:
    """How much of the post-training loss QAT recovered, against PTQ with the same formats."""
    from .methods.qat import ptq_same_config
    require(calibration is not None and len(calibration) > 0,
            "QAT's recovery is measured against post-training quantization, which needs calibration data")
    ptq = ptq_same_config(model, q.recipe, calibration, list(q.float_layers))
    pp = predict(ptq, model, data, s.eval_batch_size, s.verbose, desc="evaluate PTQ reference")
    acc_fp = metrics.accuracy(base.labels, base.pred)
    acc_ptq = metrics.accuracy(base.labels, pp.pred)
    acc_qat = cand.metrics["accuracy"]["candidate"]
    lost = acc_fp - acc_ptq
    return {"ptq_accuracy": acc_ptq, "qat_accuracy": acc_qat, "baseline_accuracy": acc_fp,
            "recovered_share": (acc_qat - acc_ptq) / lost if lost > 0 else None,
            "note": None if lost > 0 else "post-training quantization with these formats lost no accuracy: nothing to recover"}


class Comparer:
    """A comparison built one candidate at a time (what `quantgate auto` needs):
    the baseline is evaluated once, `add` quantizes and scores a recipe, and
    `finish` measures latency with every model interleaved, then diagnoses."""

    def __init__(self, model: Model, data: Dataset, calibration: Dataset | None = None,
                 settings: Settings | None = None, train: Dataset | None = None):
        s = self.settings = settings or Settings()
        require(len(data) > 0, "evaluation data is empty")
        self.model, self.data, self.calibration, self.train = model, data, calibration, train
        self.quantized: dict[str, Quantized] = {}
        torch.manual_seed(s.seed)
        with perf.RssSampler() as mem:
            self.base = predict(model.module, model, data, s.eval_batch_size, s.verbose, desc="evaluate baseline")
        y = self.base.labels
        baseline = {"name": "fp32", "accuracy": metrics.accuracy(y, self.base.pred),
                    "macro_f1": metrics.macro_f1(y, self.base.pred, len(model.labels)),
                    "weight_bytes": tensor_bytes(model.module), "perf": mem.summary()}
        self.comp = Comparison(
            model={"path": model.path, "sha": model.sha, "labels": model.labels, "max_length": model.max_length,
                   "task": model.task},
            data={"source": data.source, "n": len(data), "fingerprint": data.fingerprint(),
                  "slices": {k: sorted(set(v)) for k, v in data.slices.items()},
                  "calibration": None if calibration is None else {"source": calibration.source, "n": len(calibration)}},
            settings=asdict(s), baseline=baseline, environment=environment(),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def check_calibration(self, n: int) -> None:
        """Sufficiency, coverage and outlier checks on the first n calibration examples."""
        if self.calibration is not None and len(self.calibration):
            from .activations import check_calibration
            self.comp.calibration_checks = check_calibration(self.model, self.calibration.head(n), self.data,
                                                             self.settings.eval_batch_size, self.settings.verbose)

    def add(self, recipe: Recipe) -> Candidate:
        require(recipe.name not in self.quantized and recipe.name != "fp32",
                f"recipes must be distinct, got {recipe.name} twice")
        q = quantize(self.model, recipe, self.calibration if recipe.needs_calibration else None, train=self.train)
        cand = evaluate_candidate(self.model, q, self.data, self.base, self.settings)
        if recipe.method == "qat":
            cand.extra["qat"] = qat_recovery(self.model, q, self.data, self.calibration, self.base, cand, self.settings)
        self.comp.candidates.append(cand)
        self.quantized[q.name] = q
        return cand

    def finish(self) -> Comparison:
        s, comp = self.settings, self.comp
        if s.verbose:
            print(f"measuring latency at batch sizes {', '.join(map(str, s.batch_sizes))}, all models interleaved ...",
                  file=sys.stderr)
        modules = {"fp32": self.model.module} | {n: q.module for n, q in self.quantized.items()}
        lat = perf.measure(modules, self.model, self.data.texts, s.batch_sizes, min_reps=s.perf_min_reps,
                           budget_s=s.perf_budget_s)
        comp.baseline["perf"].update(lat["fp32"])
        for c in comp.candidates:
            c.perf.update(lat[c.name])
        from .diagnose import diagnose
        comp.warnings = diagnose(comp)
        return comp


def compare(model: Model, data: Dataset, recipes: list[Recipe], calibration: Dataset | None = None,
            settings: Settings | None = None, train: Dataset | None = None) -> Comparison:
    require(recipes, "no recipes to compare: name at least one (e.g. dynamic)")
    names = [r.name for r in recipes]
    require(len(set(names)) == len(names), f"recipes must be distinct, got {names}")
    c = Comparer(model, data, calibration, settings, train)
    calibrated = [r for r in recipes if r.needs_calibration]
    if calibrated:
        c.check_calibration(max(r.num_samples for r in calibrated))
    for r in recipes:
        c.add(r)
    return c.finish()


# -- causal language models ---------------------------------------------------

@dataclass
class LMSettings:
    context: int = 512             # tokens per perplexity window (non-overlapping, no carried context)
    max_windows: int | None = 40
    n_prompts: int = 8
    new_tokens: int = 32           # greedy continuation length for the generation diff
    batch_sizes: tuple[int, ...] = (1, 8)
    decode_steps: int = 32
    decode_rounds: int = 3
    runtime: str = "auto"          # decode loop: auto (quantgate's decoder where it runs), quantgate, transformers
    n_boot: int = 2000
    seed: int = 0
    verbose: bool = True

    def __post_init__(self):
        self.batch_sizes = tuple(self.batch_sizes)
        require(self.batch_sizes and all(isinstance(b, int) and b > 0 for b in self.batch_sizes),
                f"batch sizes must be positive integers, got {self.batch_sizes}")
        require(isinstance(self.context, int) and self.context >= 16, f"context must be an integer >= 16, got {self.context!r}")
        require(isinstance(self.decode_steps, int) and self.decode_steps >= 1,
                f"decode steps must be a positive integer, got {self.decode_steps!r}")
        from .decoder import RUNTIMES
        require(self.runtime in RUNTIMES, f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")



def compare_lm(lm, eval_texts: list[str], recipes: list[Recipe], calibration: Dataset | None = None,
               settings: LMSettings | None = None, train: Dataset | None = None, source: str = "",
               quantized: list[Quantized] | None = None) -> Comparison:
    """A causal LM and its quantized candidates on held-out text: perplexity
    (with a paired bootstrap interval over windows), KL and same-top-token rate
    against the baseline, the greedy generation diff, decode latency and tokens/s
    per batch size, time to first token, weight bytes, peak memory, quantization
    time, and which kernels ran. `quantized` adds candidates made elsewhere."""
    import hashlib

    from .methods.weight_only import kernel_calls
    from .tasks import causal_lm as T
    s = settings or LMSettings()
    names = [r.name for r in recipes] + [q.name for q in quantized or []]
    require(names, "no recipes to compare: name at least one (e.g. gptq-int4-g128)")
    require(len(set(names)) == len(names), f"recipes must be distinct, got {names}")
    tok = lm.tokenizer
    windows = T.eval_windows(tok, eval_texts, s.context, s.max_windows)
    prompts = T.prompts_from(eval_texts, s.n_prompts)
    cands: dict[str, tuple[Quantized, dict]] = {}
    for q in quantized or []:
        cands[q.name] = (q, {})
    for r in recipes:
        with perf.RssSampler() as mem:
            q = quantize(lm, r, calibration if r.needs_calibration else None, train=train)
        cands[q.name] = (q, {"quantize_peak_rss_mb": mem.summary()["peak_rss_mb"]})
    modules = {"fp32": lm.module} | {n: q.module for n, (q, _) in cands.items()}
    for q, _ in cands.values():        # count only the evaluation's kernel calls
        for m in q.module.modules():
            if hasattr(m, "calls"):
                m.calls.clear()
    scores = T.score_windows(modules, windows, s.verbose)
    gens, mems = {}, {}
    for name, m in modules.items():
        with perf.RssSampler() as mem:
            gens[name] = T.greedy(m, tok, prompts, s.new_tokens, s.runtime)
        mems[name] = mem.summary()
    if s.verbose:
        print(f"measuring decode speed at batch sizes {', '.join(map(str, s.batch_sizes))}, all models interleaved ...",
              file=sys.stderr)
    speed = T.decode_speed(modules, tok, prompts[0] if prompts else eval_texts[0][:200], s.batch_sizes,
                           s.decode_steps, s.decode_rounds, s.runtime)
    base_nll = scores["fp32"].nll
    h = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16]
    comp = Comparison(
        model={"path": lm.path, "sha": lm.sha, "task": "causal-lm"},
        data={"source": source, "n": int(windows.shape[0]), "tokens": int(windows.numel()), "context": s.context,
              "stride": s.context, "fingerprint": h, "prompts": len(prompts), "new_tokens": s.new_tokens,
              "slices": {}, "calibration": None if calibration is None else {"source": calibration.source,
                                                                              "n": len(calibration)}},
        settings=asdict(s),
        baseline={"name": "fp32", "perplexity": float(np.exp(base_nll.mean())), "weight_bytes": tensor_bytes(lm.module),
                  "perf": speed["fp32"] | mems["fp32"]},
        environment=environment(), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    for name, (q, qmem) in cands.items():
        sc = scores[name]
        diffs = T.generation_diff(tok, prompts, gens["fp32"], gens[name])
        extra = {"kernel_calls": kernel_calls(q.module), **{k: v for k, v in q.extra.items() if k != "layer_errors"}}
        comp.candidates.append(Candidate(
            name=name, recipe=q.recipe.to_dict(), kernel=q.kernel, quantized_layers=q.quantized_layers,
            float_layers=q.float_layers, float_ops=q.float_ops, notes=q.notes, quantize_seconds=q.seconds,
            calibration=q.calibration, weight_bytes=q.weight_bytes or tensor_bytes(q.module),
            metrics={"perplexity": T.perplexity_delta(base_nll, sc.nll, s.n_boot, s.seed)},
            mcnemar={}, slices={}, agreement=float(sc.same_top.mean()), mean_kl=float(sc.kl.mean()),
            changed=diffs, n_changed=len(diffs), perf=speed[name] | mems[name] | qmem, extra=extra))
    from .diagnose import diagnose
    comp.warnings = diagnose(comp)
    return comp
