"""Comparison: the baseline and each candidate on the same examples, for any task.

    comparison = compare(model, eval_data, recipes, calibration)

For every candidate: the task's metrics (tasks/: accuracy and macro-F1 of a
classifier, exact match / choice accuracy / token F1 of a prompted LM task,
perplexity of raw text) with paired 95% intervals, overall and per slice;
McNemar's test; the changed examples or answers; latency percentiles and
throughput per batch size (per token for LMs), with the conditions they were
measured under; weight bytes and peak memory; time to quantize; which layers
stayed in float and why."""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .data import Dataset
from .errors import QuantgateError, require
from .evaluate import perf
from .methods.common import Quantized, footprint, tensor_bytes
from .models import Model
from .quantize import quantize
from .recipes import Recipe


@dataclass
class Settings:
    """How a comparison measures. One set for every task; the language-model
    fields apply where the task is a causal LM's."""
    batch_sizes: tuple[int, ...] | None = None   # latency batch sizes (default: 1,32 for classifiers, 1,8 for LMs)
    eval_batch_size: int = 32
    n_boot: int = 2000
    seed: int = 0
    perf_budget_s: float = 5.0
    perf_min_reps: int = 10
    max_changed: int = 200
    verbose: bool = True
    threads: int | None = None     # torch threads while timing (None: as many as cores sat idle before timing)
    memory_limit_gb: float | None = None   # the most memory a comparison may use (None: what the system has free)
    hold: str = "auto"             # candidates: "together" in memory, "one at a time" (on disk once scored, timed
                                   # loaded in turn), or auto: together where that fits, else one at a time
    # causal LMs
    context: int = 512             # tokens per perplexity window (non-overlapping, no carried context)
    max_windows: int | None = 40
    n_prompts: int = 8             # raw text: prompts for the generation diff
    new_tokens: int = 32           # raw text: greedy continuation length for the generation diff
    answer_tokens: int = 8         # prompted tasks: greedy answer length, at most
    task_metric: str | None = None   # prompted tasks: exact_match or token_f1 (free text); choice_accuracy (choices)
    chat_template: bool = False    # prompted tasks: wrap prompts in the tokenizer's chat template
    decode_steps: int = 32
    decode_rounds: int = 3
    runtime: str = "auto"          # decode loop: auto (quantgate's decoder where it runs), quantgate, transformers
    serve_in: str = "quantgate"    # where every model runs: quantgate (PyTorch), or each exported and run in
                                   # onnxruntime (classifiers) or llama.cpp (LMs); runtime= may name these too

    def __post_init__(self):
        if self.runtime in SERVE_IN[1:]:        # --runtime llama.cpp / onnxruntime: a serving runtime, not a decode loop
            self.serve_in, self.runtime = self.runtime, "auto"
        if self.batch_sizes is not None:
            self.batch_sizes = tuple(self.batch_sizes)
            require(self.batch_sizes and all(isinstance(b, int) and b > 0 for b in self.batch_sizes),
                    f"batch sizes must be positive integers, got {self.batch_sizes}")
        for name in ("eval_batch_size", "n_boot", "perf_min_reps", "decode_steps", "decode_rounds", "answer_tokens"):
            v = getattr(self, name)
            require(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        require(isinstance(self.context, int) and self.context >= 16, f"context must be an integer >= 16, got {self.context!r}")
        require(self.memory_limit_gb is None or (isinstance(self.memory_limit_gb, (int, float)) and self.memory_limit_gb > 0),
                f"memory_limit_gb must be a positive number, got {self.memory_limit_gb!r}")
        require(self.hold in HOLD, f"hold must be one of {', '.join(HOLD)}, got {self.hold!r}")
        require(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
                f"threads must be a positive integer, got {self.threads!r}")
        from .decoder import RUNTIMES
        require(self.runtime in RUNTIMES + SERVE_IN[1:],
                f"runtime must be one of {', '.join(RUNTIMES + SERVE_IN[1:])}, got {self.runtime!r}")
        require(self.serve_in in SERVE_IN, f"serve_in must be one of {', '.join(SERVE_IN)}, got {self.serve_in!r}")
        if self.serve_in == "llama.cpp":
            self.batch_sizes = self.batch_sizes or (1,)
            require(self.batch_sizes == (1,), "--runtime llama.cpp decodes one sequence at a time "
                                              "(llama-cpp-python's Llama): use --batch-sizes 1")


SERVE_IN = ("quantgate", "onnxruntime", "llama.cpp")


def check_serves(settings: Settings, model, recipe: Recipe) -> None:
    """Before any work: the serving runtime can run the model and what `recipe` makes."""
    if settings.serve_in == "onnxruntime":
        require(isinstance(model, Model), "--runtime onnxruntime serves classifiers; for an LM use --runtime llama.cpp")
    elif settings.serve_in == "llama.cpp":
        from .export import gguf
        require(not isinstance(model, Model), "--runtime llama.cpp serves causal LMs; for a classifier use "
                                              "--runtime onnxruntime")
        if recipe is not None:
            try:
                gguf.check_recipe(recipe, model.module.config)
            except QuantgateError as e:
                raise QuantgateError(f"--runtime llama.cpp runs GGUF: {e}") from None


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
    agreement: float              # share of examples with the same output (class, answer; top token for raw text)
    mean_kl: float                # mean KL(baseline || candidate) of the output distributions
    changed: list[dict]
    n_changed: int
    perf: dict
    extra: dict = field(default_factory=dict)   # method-specific results, e.g. QAT's recovery share
    same_top: float | None = None  # LMs: share of answer/window positions with the baseline's top token
    footprint: dict = field(default_factory=dict)   # bits per parameter, parameters left in float


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
    task: dict = field(default_factory=dict)  # the task's kind, primary metric, how each metric reads (tasks/)

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


def qat_recovery(model: Model, q: Quantized, task, calibration: Dataset | None, acc_fp: float,
                 cand: Candidate) -> dict:
    """How much of the post-training loss QAT recovered, against PTQ with the same formats."""
    from .methods.qat import ptq_same_config
    require(calibration is not None and len(calibration) > 0,
            "QAT's recovery is measured against post-training quantization, which needs calibration data")
    ptq = ptq_same_config(model, q.recipe, calibration, list(q.float_layers))
    acc_ptq = task.summary(task.score(ptq, "PTQ reference"))["accuracy"]
    acc_qat = cand.metrics["accuracy"]["candidate"]
    lost = acc_fp - acc_ptq
    return {"ptq_accuracy": acc_ptq, "qat_accuracy": acc_qat, "baseline_accuracy": acc_fp,
            "recovered_share": (acc_qat - acc_ptq) / lost if lost > 0 else None,
            "note": None if lost > 0 else "post-training quantization with these formats lost no accuracy: nothing to recover"}


def weight_bits(recipe: Recipe) -> float:
    """Bits a candidate stores per Linear weight (scales included): what it will hold in memory."""
    if recipe.method == "qlora" and recipe.merge:
        return 32                                        # adapters merged into float weights
    if recipe.method in ("nf4", "qlora"):
        return 4 + 8 / recipe.block_size + 32 / (recipe.block_size * getattr(recipe, "dq_block_size", 256))
    if recipe.method == "half":
        return 16
    bits = getattr(recipe, "bits", None) or getattr(recipe, "weight_bits", None) or 8
    group = getattr(recipe, "group_size", None)
    return bits + (64 / group if group else 0)           # an fp32 scale and zero point per group


def baseline_name(module: torch.nn.Module) -> str:
    """fp32, or the dtype the model was kept in as stored (`lm compare --baseline stored`): "bf16 as stored"."""
    dt = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    return "fp32" if dt == torch.float32 else {torch.bfloat16: "bf16", torch.float16: "fp16"}[dt] + " as stored"


STREAMED = ("weight-only", "gptq", "nf4")    # the methods streaming.quantize_stored runs from disk


def from_disk(model) -> bool:
    """A causal LM kept as stored (`--baseline stored`): its fp32 is never made, so each candidate
    is quantized from its shards block by block (streaming.quantize_stored) and loaded from there."""
    return not isinstance(model, Model) and baseline_name(model.module) != "fp32"


def check_streams(model, recipe: Recipe, save_to: str | None = None) -> None:
    """Before any work: a model kept as stored quantizes `recipe` from disk, which runs weight
    formats only, into a folder of its own under `save_to` that must not exist yet."""
    if not from_disk(model):
        return
    require(recipe.method in STREAMED,
            f"the baseline is kept as stored, so each candidate is quantized from disk one block at a time: weight "
            f"formats only (int, gptq, nf4), not {recipe.name}; compare {recipe.name} against the fp32 baseline")
    if save_to is not None:
        from .artifact import check_out
        check_out(Path(save_to) / recipe.name)


def runtime_bits(recipe: Recipe) -> float:
    """Bits per Linear weight a candidate holds at run time beside what it stores: the packed kernel's layout."""
    from .methods.weight_only import packed_copy_bits
    if recipe.method not in ("weight-only", "gptq"):
        return 0
    return packed_copy_bits(recipe.bits, recipe.group_size, getattr(recipe, "symmetric", True))


HELD = "candidates, held for the interleaved timing"     # memory_plan's part that one at a time leaves out


def memory_plan(model, recipes: list[Recipe], scoring_bytes: int | None = None, saved: dict | None = None) -> dict:
    """What a comparison will hold at its peak, by part (bytes): the fp32 model, every candidate
    (kept for the interleaved timing; `saved`: artifacts loaded as they are, by name), the largest
    quantization's working copy and work, and scoring's working memory (measured on the baseline).
    The model is already resident. A model kept as stored quantizes from disk (`from_disk`): its
    peak is the larger of two phases, quantizing one recipe with the candidates before it held,
    or scoring and timing with all of them held.
    `one_at_a_time` is the peak with no candidate held: each waits on disk once scored."""
    module = model.module
    total = tensor_bytes(module)
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    linear = [m.weight for m in module.modules()                 # a head tied to the embedding stays float
              if isinstance(m, torch.nn.Linear) and id(m.weight) not in embeddings]
    linear_bytes, linear = sum(w.numel() * w.element_size() for w in linear), sum(w.numel() for w in linear)
    held, work, worst, streamed = dict(saved or {}), 0, "", {}
    stream = from_disk(model)
    rest = (total - linear_bytes) * (4 // next(module.parameters()).element_size() if stream else 1)  # fp32 once loaded
    for r in recipes:
        held[r.name] = int(rest + linear * (weight_bits(r) + runtime_bits(r)) / 8)
        w = total                                           # the copy a method quantizes in place
        if stream:                                          # one block at a time from the shards instead
            from .streaming import Stored, estimate
            w = streamed[r.name] = estimate(Stored(model.path), r, getattr(r, "num_samples", 0) if r.method == "gptq"
                                            else 0, getattr(r, "seq_len", 0), 1)["total"]
        elif r.method == "gptq":
            from .methods.gptq import estimate_peak_bytes
            windows = torch.empty(r.num_samples, r.seq_len)
            w += sum(v for k, v in estimate_peak_bytes(module, windows, 1, r.states)["parts"].items()   # GPTQ runs fewer
                     if not k.startswith("model"))                                             # windows at once to fit
        elif r.method == "qat":
            w += 3 * total                                  # gradients and Adam's two moments
        # (scoring an NF4 candidate holds its Linear weights dequantized, methods/nf4.dequantized_once:
        # at most the working copy counted here, which is gone by then)
        if w > work:
            work, worst = w, r.name
    name = baseline_name(module)
    base = {"the fp32 model" if name == "fp32" else f"the model, {name}": total}
    scoring = {} if scoring_bytes is None else {"scoring a batch (measured on the baseline)": scoring_bytes}
    if streamed:        # two phases, each its own peak: quantizing a recipe from disk with the candidates before it
        before, phases = sum(held.values()) - sum(held[r.name] for r in recipes), []     # held, then scoring all
        for r in recipes:
            phases.append(base | {f"{len(held) - len(recipes) + len(phases)} {HELD}": before,
                                  f"quantizing {r.name} from disk, one block at a time": streamed[r.name]})
            before += held[r.name]
        parts = max([*phases, base | {f"{len(held)} {HELD}": before} | scoring], key=lambda p: sum(p.values()))
        return {"total": sum(parts.values()), "parts": parts, "resident": total, "candidates": held,
                "one_at_a_time": total + max([*streamed.values(), *scoring.values()])}
    parts = base | {f"{len(held)} {HELD}": sum(held.values())}
    if recipes:                                             # (artifacts alone are loaded, not quantized)
        parts[f"quantizing {worst}: the working copy and its method's work"] = work
    parts |= scoring
    together = sum(parts.values())
    return {"total": together, "parts": parts, "resident": total, "candidates": held,
            "one_at_a_time": together - sum(held.values())}


def check_memory(plan: dict, limit_gb: float | None = None, hold: str = "auto") -> str:
    """How the comparison holds its candidates: "together" (all in memory, timed interleaved) where
    that fits, else "one at a time" (each on disk once scored, timed loaded in turn) where that fits
    and `hold` allows; refused, with the numbers, where neither fits the memory available now (or
    `limit_gb` in all)."""
    import psutil
    gb = lambda b: f"{b / 2**30:.2f} GB"                    # noqa: E731
    if limit_gb is None:
        avail, base, what = psutil.virtual_memory().available, plan["resident"], "more memory"
    else:
        avail, base, what = int(limit_gb * 2**30), 0, "memory (--memory-limit)"
    plan["available"] = avail
    if hold != "one at a time" and plan["total"] - base <= avail:
        return "together"
    if hold != "together" and plan["one_at_a_time"] - base <= avail:
        return "one at a time"
    need = plan["one_at_a_time" if hold != "together" else "total"] - base
    parts = {k: v for k, v in plan["parts"].items() if hold == "together" or not k.endswith(HELD)}
    raise QuantgateError(f"this comparison would need about {gb(need)} {what} at its peak"
                         + (" with one candidate in memory at a time" if hold != "together" else "")
                         + f" but {gb(avail)} is available (" + "; ".join(f"{k} {gb(v)}" for k, v in parts.items())
                         + "); compare smaller recipes or lower GPTQ's calibration (--samples, --seq-len)")


class Shelf:
    """Where scored candidates wait when they do not fit in memory together: each module is
    saved whole (torch.save) to a temporary folder quantgate made, and loaded back memory-mapped
    when it is timed or saved. The folder goes when the comparison does."""

    def __init__(self):
        import tempfile
        self._dir = tempfile.TemporaryDirectory(prefix="quantgate-shelf-")
        self.folder = self._dir.name
        self.paths: dict[str, str] = {}
        self.in_memory = _filesystem(self.folder) in ("tmpfs", "ramfs")   # a shelf there saves nothing

    def put(self, name: str, module: torch.nn.Module) -> bool:
        """Shelve `module`; False (it stays in memory) for a compiled PT2E graph: a classifier's
        size, and loaded back it would compile again in every round."""
        from .methods.pt2e import Compiled
        if isinstance(module, Compiled):
            return False
        path = Path(self.folder) / f"{len(self.paths)}.pt"
        torch.save(module, path)
        self.paths[name] = str(path)
        return True

    def get(self, name: str) -> torch.nn.Module:
        return torch.load(self.paths[name], mmap=True, weights_only=False)


def _filesystem(path: str) -> str | None:
    """The type of the filesystem `path` is on (the longest mount point above it in /proc/mounts)."""
    try:
        mounts = [line.split()[1:3] for line in open("/proc/mounts")]
    except OSError:
        return None
    above = [(m, t) for m, t in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    return max(above, key=lambda x: len(x[0]))[1] if above else None


HOLD = ("auto", "together", "one at a time")
TURN_ROUNDS = 3          # one model at a time: rounds of timing, each model loaded in turn in every round


class Comparer:
    """A comparison built one candidate at a time (what `quantgate auto` needs),
    for any task (tasks.for_model picks it from the model and the data): the
    baseline is scored once, `add` quantizes and scores a recipe, and `finish`
    measures speed with every model interleaved, then diagnoses."""

    def __init__(self, model, data, calibration: Dataset | None = None, settings: Settings | None = None,
                 train: Dataset | None = None, recipes: list[Recipe] | None = None, saved: dict | None = None,
                 save_to: str | None = None):
        from . import tasks
        s = self.settings = settings or Settings()
        self.save_to = save_to       # where a model kept as stored has its candidates quantized to (None: a temporary
        self._made = None            # folder, gone with the comparison)
        for r in recipes or []:
            check_streams(model, r, save_to)
        if s.serve_in != "quantgate":      # another runtime's processes hold their models: nothing to shelve here
            require(s.hold != "one at a time", f"--one-at-a-time shelves PyTorch modules; --runtime {s.serve_in} "
                                               "runs each model in a process of its own")
            s.hold = "together"
        self.hold = "together"
        self.shelf: Shelf | None = None
        self.saved = saved or {}
        if recipes or saved:    # the memory the candidates will need, before any work, then with scoring's measured
            self.hold = check_memory(memory_plan(model, recipes or [], saved=saved), s.memory_limit_gb, s.hold)
        self.task = task = tasks.for_model(model, data, s)
        if s.batch_sizes is None:
            s.batch_sizes = task.batch_sizes
        self.model, self.data, self.calibration, self.train = model, data, calibration, train
        self.quantized: dict[str, Quantized] = {}
        self.serving: dict[str, torch.nn.Module] = {}     # what is scored and timed: the module, or its runtime's
        self._exports = None                               # where --runtime onnxruntime / llama.cpp writes the exports
        check_serves(s, model, None)
        if s.serve_in == "llama.cpp":
            from .export import llamacpp
            self._llama_python = llamacpp.python()         # found (or refused) before the baseline is scored
        torch.manual_seed(s.seed)
        self.served = self._serving(model.module, "fp32")
        with perf.RssSampler() as mem:
            self.base = task.score(self.served, "fp32")
        # scoring's working memory, for memory_plan (a memory-mapped model's weights paged in meanwhile are the model's)
        self.scoring_bytes = max(0, mem.peak - mem.start - mem.file_growth)
        about = task.describe()
        data_info = about.pop("data")
        data_info["calibration"] = None if calibration is None else {"source": calibration.source, "n": len(calibration)}
        wb = tensor_bytes(model.module)
        bname = baseline_name(model.module)
        baseline = {"name": bname, **task.summary(self.base), "weight_bytes": wb,
                    "footprint": footprint(model.module, wb), "perf": mem.summary()}
        if bname != "fp32":
            dt = bname.split()[0]
            baseline["note"] = (f"the baseline is the model as stored ({dt}), computed in {dt}: the weights as shipped, "
                                f"in half the memory of fp32, with {dt} arithmetic's own rounding")
        model_info = {"path": model.path, "sha": model.sha, "task": model.task}
        if isinstance(model, Model):
            model_info |= {"labels": model.labels, "max_length": model.max_length}
        self.comp = Comparison(model=model_info, data=data_info, settings=asdict(s), baseline=baseline,
                               environment=environment(), task=about,
                               created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if recipes or saved:
            self.plan_memory(recipes or [])

    def plan_memory(self, recipes: list[Recipe]) -> dict:
        """Before any candidate: refuse, with the numbers, a comparison of `recipes` that will not fit."""
        plan = memory_plan(self.model, recipes, self.scoring_bytes, self.saved)
        self.hold = check_memory(plan, self.settings.memory_limit_gb, self.settings.hold)
        if self.hold == "one at a time" and self.settings.verbose:
            print(f"the candidates do not fit in memory together ({plan['total'] / 2**30:.2f} GB with the "
                  f"baseline, {plan['available'] / 2**30:.2f} GB available): each waits on disk once scored, "
                  "and is timed loaded in turn", file=sys.stderr)
        self.comp.environment["memory_plan"] = {k: v for k, v in plan.items() if k != "candidates"} | {"hold": self.hold}
        return plan

    def check_calibration(self, n: int, seq_len: int | None = None, gptq: Recipe | None = None) -> None:
        """Sufficiency, coverage and outlier checks on the first n calibration examples (classifiers),
        or on the n calibration windows of seq_len tokens an LM's GPTQ (`gptq`) would see."""
        if self.calibration is None or not len(self.calibration):
            return
        if isinstance(self.model, Model):
            from .activations import check_calibration
            self.comp.calibration_checks = check_calibration(self.model, self.calibration.head(n), self.data,
                                                             self.settings.eval_batch_size, self.settings.verbose)
        elif seq_len:
            from .activations import check_lm_calibration
            self.comp.calibration_checks = check_lm_calibration(self.model, self.calibration, self.data, n, seq_len,
                                                                self.settings.verbose, gptq)

    def add(self, recipe: Recipe | None = None, quantized: Quantized | None = None) -> Candidate:
        """Quantize `recipe` (or take a candidate made elsewhere) and score it against the baseline."""
        name = quantized.name if quantized is not None else recipe.name
        require(name not in self.quantized and name != "fp32", f"recipes must be distinct, got {name} twice")
        mem_q = {}
        if quantized is None:
            check_serves(self.settings, self.model, recipe)
            check_streams(self.model, recipe, self.save_to)
            with perf.RssSampler() as mq:
                quantized = (self._quantize_from_disk(recipe) if from_disk(self.model) else
                             quantize(self.model, recipe, self.calibration, train=self.train))
            mem_q = {"quantize_peak_rss_mb": mq.summary()["peak_rss_mb"]}
        q = quantized
        for m in q.module.modules():          # count only the evaluation's kernel calls
            if hasattr(m, "calls"):
                m.calls.clear()
        served = self._serving(q.module, q.name)
        from .methods.nf4 import dequantized_once
        with perf.RssSampler() as mem, dequantized_once(served if served is q.module else torch.nn.Module()) as held:
            res = self.task.score(served, q.name)
        from .methods.weight_only import kernel_calls
        extra = {k: v for k, v in q.extra.items() if k != "layer_errors"}
        calls = kernel_calls(q.module)
        if calls:
            extra["kernel_calls"] = calls
        wb = q.weight_bytes or tensor_bytes(q.module)
        kernel = q.kernel if served is q.module else f"{served.runtime_name} (exported from: {q.kernel})"
        cand = Candidate(name=q.name, recipe=q.recipe.to_dict(), kernel=kernel, quantized_layers=q.quantized_layers,
                         float_layers=q.float_layers, float_ops=q.float_ops, notes=q.notes, quantize_seconds=q.seconds,
                         calibration=q.calibration, weight_bytes=wb, perf=mem.summary() | mem_q, extra=extra,
                         footprint=q.footprint or footprint(self.model.module, wb, q.quantized_layers, q.module,
                                                         list(q.float_layers)),
                         **self.task.compare(self.base, res))
        if held:
            cand.notes = [*cand.notes, f"quality scored with the weights of its {held} NF4 layers dequantized once "
                          "(outputs bit-identical to dequantizing on every call); speed timed on the real path, "
                          "which dequantizes on every call"]
            cand.extra["scored_with"] = "NF4 weights dequantized once"
        if q.recipe.measured_against_ptq:
            cand.extra["qat"] = qat_recovery(self.model, q, self.task, self.calibration, self.comp.baseline["accuracy"],
                                             cand)
        self.comp.candidates.append(cand)
        self.quantized[q.name] = q
        self.serving[q.name] = served
        if self.hold == "one at a time":           # on disk until it is timed (or saved): the next one needs the room
            if self.shelf is None:
                self.shelf = Shelf()
                if self.shelf.in_memory:
                    print(f"warning: the candidates wait in {self.shelf.folder}, on a filesystem in memory, "
                          "which saves no memory: set TMPDIR to a folder on disk", file=sys.stderr)
            if self.shelf.put(q.name, q.module):
                q.module = self.serving[q.name] = None
                del served, quantized, q
                perf.trim_heap()
        return cand

    def _quantize_from_disk(self, recipe: Recipe) -> Quantized:
        """`recipe` run block by block from the shards of a model kept as stored, into an artifact
        (in `save_to`, else a temporary folder), loaded as the candidate."""
        from .artifact import candidate
        from .streaming import quantize_stored
        if self.save_to is None and self._made is None:
            import tempfile
            self._made = tempfile.TemporaryDirectory(prefix="quantgate-candidates-")
        folder = Path(self.save_to or self._made.name) / recipe.name
        quantize_stored(self.model.path, recipe, self.calibration if recipe.needs_calibration else None, folder,
                        verbose=self.settings.verbose)
        q = candidate(folder, self.model, made_here=True)
        if self.save_to is None:
            q.notes.append("that folder was temporary, gone with the comparison: give save_to to keep the artifact")
        return q

    def quantized_candidate(self, name: str) -> Quantized:
        """The candidate `name` made, its module loaded back from the shelf where it waits there."""
        q = self.quantized[name]
        if q.module is None:
            q.module = self.shelf.get(name)
        return q

    def _speed_in_turn(self, names: list[str], sizes: dict[str, int]) -> tuple[dict, dict]:
        """Speed and own memory with one model in memory at a time: TURN_ROUNDS rounds, each a
        share of the timing for every model in turn (the baseline stays resident; a candidate is
        loaded from the shelf, timed, and let go), so load from elsewhere hits them alike."""
        parts, own = {k: [] for k in names}, {}
        probe = self.task.memory_probe()
        for r in range(TURN_ROUNDS):
            for name in names:
                m = self.served if name == "fp32" else self.serving[name] or self.shelf.get(name)
                parts[name].append(self.task.speed({name: m}, share=1 / TURN_ROUNDS)[name])
                if r == 0:
                    own |= perf.own_memory({name: m}, sizes, *probe)
                del m
                perf.trim_heap()
        return {k: perf.merge_rounds(v) for k, v in parts.items()}, own

    def _serving(self, module, name: str):
        """The module the comparison scores and times: as it is, or exported and run in
        ONNX Runtime (classifiers) or llama.cpp (LMs)."""
        s = self.settings
        if s.serve_in == "quantgate":
            return module
        import tempfile
        self._exports = self._exports or tempfile.TemporaryDirectory(prefix="quantgate-serve-")
        folder = Path(self._exports.name) / name
        if s.serve_in == "llama.cpp":
            from .export import llamacpp
            return llamacpp.serve(module, self.model, folder, name, self.task.longest(), self._llama_python)
        from .export.onnx import RUNTIME, serve
        served = serve(module, self.model, folder, name)
        served.runtime_name = f"{RUNTIME} {served.version}"
        return served

    def finish(self, timed: list[str] | None = None) -> Comparison:
        """Measure speed and memory, every model interleaved (or fp32 and the candidates
        named in `timed`: auto leaves out those that missed its accuracy budget), then diagnose."""
        s, comp = self.settings, self.comp
        threads, why = perf.fair_threads(s.threads)
        before = torch.get_num_threads()
        names = ["fp32"] + [k for k in self.serving if timed is None or k in timed]
        sizes = {"fp32": comp.baseline["weight_bytes"]} | {c.name: c.weight_bytes for c in comp.candidates}
        together = self.hold == "together"
        how = (f"{len(names)} models interleaved" if together else
               f"{len(names)} models one at a time, each loaded in turn, in {TURN_ROUNDS} alternating rounds")
        if s.verbose:
            print(f"measuring speed at batch sizes {', '.join(map(str, s.batch_sizes))}, {how}, {why} ...",
                  file=sys.stderr)
        torch.set_num_threads(threads)
        try:
            with perf.Conditions() as cond:
                if together:
                    modules = {"fp32": self.served} | {k: self.serving[k] for k in names[1:]}
                    speed = self.task.speed(modules)
                else:                                   # each model's own memory measured while it is loaded
                    speed, own = self._speed_in_turn(names, sizes)
        finally:
            torch.set_num_threads(before)
        if together:
            own = perf.own_memory(modules, sizes, *self.task.memory_probe())
        else:
            how += (" (the models do not fit in memory together: percentiles over every round's calls"
                    + ("; they waited on a filesystem in memory, which saved none" if self.shelf and self.shelf.in_memory
                       else "") + ")")
        comp.environment["timing"] = cond.summary() | {"threads_why": why, "held": how}
        comp.environment["serving_runtime"] = getattr(self.served, "runtime_name", "quantgate (PyTorch)")
        comp.environment["served_as"] = {"onnxruntime": "ONNX", "llama.cpp": "GGUF"}.get(s.serve_in)
        comp.baseline["perf"].update(speed["fp32"] | own["fp32"])
        for c in comp.candidates:
            c.perf.update(speed[c.name] | own[c.name] if c.name in names else
                          {"batch_sizes": {}, "not_timed": "missed the accuracy budget, so it cannot be chosen: not timed"})
        for m in [self.served, *self.serving.values()]:     # llama.cpp's worker processes end here
            if hasattr(m, "close"):
                m.close()
        for p in [comp.baseline["perf"], *(c.perf for c in comp.candidates)]:
            perf.drop_samples(p)                 # the raw calls: merged across rounds, not reported
        from .diagnose import diagnose
        comp.warnings = diagnose(comp)
        return comp


def compare(model, data, recipes: list[Recipe], calibration: Dataset | None = None,
            settings: Settings | None = None, train: Dataset | None = None,
            quantized: list[Quantized] | None = None, artifacts: list[str] | None = None,
            save_to: str | None = None) -> Comparison:
    """The baseline and each candidate on the same evaluation data, for any task:
    a classifier and a labelled Dataset, a causal LM and a PromptSet (its task)
    or a list of texts (perplexity). `quantized` adds candidates made elsewhere;
    `artifacts`, saved artifacts of this model, each loaded when its turn comes
    (after the baseline is scored, and shelved once scored where they do not fit). A causal LM
    kept as stored (`load_causal_lm(path, "stored")`) has each recipe quantized from its shards,
    block by block, into an artifact in `save_to/<recipe>` (None: a temporary folder)."""
    from .artifact import candidate, check_candidate
    from .artifact import held_bytes
    manifests = [check_candidate(a, model) for a in artifacts or []]       # before any work
    made = [Recipe.from_dict(m["recipe"]) for m in manifests]
    saved = {r.name: held_bytes(m) for r, m in zip(made, manifests)}
    names = [r.name for r in recipes] + [q.name for q in quantized or []] + [r.name for r in made]
    require(names, "no recipes to compare: name at least one (e.g. dynamic, or gptq-int4-g128 for a language model)")
    require(len(set(names)) == len(names), f"recipes must be distinct, got {names}"
            + (" (an artifact's candidate is named by its recipe)" if manifests else ""))
    from .quantize import check_applies
    for r in recipes:
        check_applies(r, model.task)
        check_serves(settings or Settings(), model, r)
    for r in made:
        check_serves(settings or Settings(), model, r)
    c = Comparer(model, data, calibration, settings, train, recipes, saved, save_to)
    calibrated = [r for r in recipes if r.needs_calibration]
    if calibrated:
        c.check_calibration(max(r.num_samples for r in calibrated), max(getattr(r, "seq_len", 0) for r in calibrated),
                            next((r for r in calibrated if r.method == "gptq"), None))
    for q in quantized or []:
        c.add(quantized=q)
    for a in artifacts or []:
        c.add(quantized=candidate(a, model))
    for r in recipes:
        c.add(r)
    return c.finish()
