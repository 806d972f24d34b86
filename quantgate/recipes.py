"""Recipes: small, validated dataclasses that say how to quantize a model.

A recipe is data. It validates itself when built, round-trips through JSON and
YAML, and is saved next to every artifact it produced.

    >>> r = WeightOnly(bits=4, group_size=64)
    >>> Recipe.from_dict(r.to_dict()) == r
    True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import QuantgateError, require

_REGISTRY: dict[str, type["Recipe"]] = {}
MAX_RECIPE_BYTES = 1 << 20     # a recipe file larger than this is refused before parsing
MAX_PATTERNS = 1000            # exclude / target patterns per recipe


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    require(value in allowed, f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """Base class. Subclasses set `method` and validate in `__post_init__`."""

    method: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False
    measured_against_ptq: ClassVar[bool] = False
    stores_weights: ClassVar[bool] = False     # a weight format (int, GPTQ, NF4): some layers may be kept at int8
    # the kinds of model a method applies to (Model.task values)
    tasks: ClassVar[tuple[str, ...]] = ("sequence-classification", "causal-lm")

    # Module names (fnmatch patterns, e.g. "classifier*") that stay in float.
    exclude: tuple[str, ...] = ()
    # Linear layers with fewer output features than this stay in float ("too small").
    min_out_features: int = 16
    # Module names (patterns) stored as int8 per channel, rounded to nearest, instead of the
    # recipe's format: mixed precision for the layers that hurt most (weight formats only).
    int8_layers: tuple[str, ...] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.method:
            _REGISTRY[cls.method] = cls

    def __post_init__(self):
        for name in ("exclude", "int8_layers"):
            v = getattr(self, name)
            require(isinstance(v, (list, tuple)), f"{name} must be a list of module-name patterns (e.g. "
                                                  f"[\"*attention*\"]), got {type(v).__name__} {v!r}")
            object.__setattr__(self, name, tuple(v))
            require(len(v) <= MAX_PATTERNS, f"{name} has {len(v):,} patterns; at most {MAX_PATTERNS} are allowed")
            require(all(isinstance(p, str) and p for p in v),
                    f"{name} must be a list of non-empty module-name patterns, got {v!r}")
        require(not self.int8_layers or self.stores_weights,
                f"int8_layers keeps layers of a weight format (int, gptq, nf4) at int8; {self.method} has none")
        require(isinstance(self.min_out_features, int) and self.min_out_features >= 0,
                f"min_out_features must be an integer >= 0, got {self.min_out_features!r}")

    # -- identity -----------------------------------------------------------
    @property
    def name(self) -> str:
        """The method's short name; '+floatN' when N exclude patterns keep layers in float,
        '+int8xN' when N patterns keep layers at int8."""
        return (self._name() + (f"+float{len(self.exclude)}" if self.exclude else "")
                + (f"+int8x{len(self.int8_layers)}" if self.int8_layers else ""))

    def _name(self) -> str:
        return self.method

    # -- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"method": self.method}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Recipe":
        require(isinstance(d, dict), f"a recipe must be a mapping, got {type(d).__name__}")
        d = dict(d)
        method = d.pop("method", None)
        _one_of("recipe method", method, tuple(sorted(_REGISTRY)))
        cls = _REGISTRY[method]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        require(not unknown, f"unknown field(s) {unknown} for recipe '{method}'; allowed: {sorted(known)}")
        for k in ("exclude", "int8_layers"):
            if d.get(k) is None:
                d.pop(k, None)
        try:
            return cls(**d)
        except TypeError as e:  # wrong argument types surface as a one-liner
            raise QuantgateError(f"invalid recipe '{method}': {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @staticmethod
    def load(path: str | Path) -> "Recipe":
        p = Path(path)
        require(p.is_file(), f"recipe file not found: {p}")
        size = p.stat().st_size
        require(size <= MAX_RECIPE_BYTES, f"recipe file {p} is {size:,} bytes; a recipe is at most "
                                          f"{MAX_RECIPE_BYTES:,} bytes (a few lines of YAML or JSON)")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise QuantgateError(f"recipe file {p} is not text (UTF-8 YAML or JSON)") from None
        try:
            d = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise QuantgateError(f"recipe file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
        return Recipe.from_dict(d)

    @staticmethod
    def parse(spec: str) -> "Recipe":
        """Parse a short CLI spec such as 'dynamic', 'static', 'int8', 'int4-g64' or a recipe file path."""
        if Path(spec).suffix in (".json", ".yaml", ".yml"):
            return Recipe.load(spec)
        s = spec.strip().lower()
        if s in ("bf16", "fp16"):
            return Half(dtype=s)
        if s in ("dynamic", "dynamic-int8", "dynamic-pt2e", "dynamic-torch.ao"):
            return DynamicInt8(backend=s.removeprefix("dynamic").removeprefix("-int8").strip("-") or "auto")
        if s in ("static", "static-int8"):
            return StaticInt8()
        if s.startswith("static-"):  # static[-int8][-<calibrator>][-pertensor][-symact], the recipe's own name
            parts = s.removeprefix("static-").removeprefix("int8").strip("-").split("-")
            flags = {"pertensor", "symact"} & set(parts)
            cal = "-".join(p for p in parts if p not in flags) or "minmax"
            return StaticInt8(calibrator=cal, per_channel_weights="pertensor" not in flags,
                              symmetric_activations="symact" in flags)
        if s in ("qat", "qat-w8a8"):
            return QAT()
        if s == "qat-w4a8":
            return QAT(weight_bits=4)
        if s.startswith("gptq"):   # gptq[-int<bits>][-g<N>][-noact][-nosearch][-asym][-head<b>][-bf16states]
            parts = s.split("-")[1:]
            kw = {"act_order": "noact" not in parts, "symmetric": "asym" not in parts,
                  "scale_search": "nosearch" not in parts, "states": "bf16" if "bf16states" in parts else "fp32"}
            for p in parts:
                if p.startswith("head"):
                    kw["head_bits"], kw["head_group_size"] = _head_flag(p, spec)
                elif p.startswith("int"):
                    require(p[3:].isdigit(), f"cannot parse bits in {spec!r}: expected e.g. gptq-int4-g128")
                    kw["bits"] = int(p[3:])
                elif p.startswith("g"):
                    require(p[1:].isdigit(), f"cannot parse group size in {spec!r}: expected e.g. gptq-int4-g128")
                    kw["group_size"] = int(p[1:])
                elif p not in ("act", "noact", "nosearch", "asym", "bf16states"):
                    raise QuantgateError(f"cannot parse {p!r} in {spec!r}: expected "
                                         "gptq[-int<bits>][-g<N>][-noact][-nosearch][-asym][-head<b>][-bf16states]")
            return GPTQ(**kw)
        if s.startswith("nf4"):    # nf4[-b<N>][-nodq], the recipe's own name
            kw = {}
            for p in s.split("-")[1:]:
                if p in ("dq", "nodq"):
                    kw["double_quant"] = p == "dq"
                elif p.startswith("b") and p[1:].isdigit():
                    kw["block_size"] = int(p[1:])
                else:
                    raise QuantgateError(f"cannot parse {p!r} in {spec!r}: expected nf4[-b<N>][-nodq] (e.g. nf4-b128)")
            return NF4(**kw)
        if s.startswith("qlora"):  # qlora[-r<N>][-merged]
            kw = {}
            for p in s.split("-")[1:]:
                if p == "merged":
                    kw["merge"] = True
                elif p.startswith("r") and p[1:].isdigit():
                    kw["rank"] = int(p[1:])
                else:
                    raise QuantgateError(f"cannot parse {p!r} in {spec!r}: expected qlora[-r<N>][-merged] (e.g. qlora-r16)")
            return QLoRA(**kw)
        if s.startswith("int") or s.startswith("woq-int"):
            # int<bits>[-g<N>][-asym][-search][-head<b>], the recipe's own name; flags in any order
            first, *parts = s.removeprefix("woq-").split("-")
            require(first[3:].isdigit(), f"cannot parse bits in {spec!r}: expected e.g. int8, int4-g64, int4-g64-search")
            kw = {"bits": int(first[3:])}
            for p in parts:
                if p in ("asym", "search"):
                    kw["symmetric" if p == "asym" else "scale_search"] = p == "search"
                elif p.startswith("head"):
                    kw["head_bits"], kw["head_group_size"] = _head_flag(p, spec)
                elif p.startswith("g") and p[1:].isdigit():
                    kw["group_size"] = int(p[1:])
                else:
                    raise QuantgateError(f"cannot parse {p!r} in {spec!r}: expected "
                                         "int<bits>[-g<N>][-asym][-search][-head<b>[g<N>]] (e.g. int4-g64-asym)")
            return WeightOnly(**kw)
        raise QuantgateError(f"unknown recipe {spec!r}; use one of: {recipe_grammar()}")


@dataclass(frozen=True)
class Half(Recipe):
    """Half precision: every weight and activation in bfloat16 or float16, not
    quantized. Often the best first step: half the memory of fp32, and on a CPU
    with native bf16 (AVX512-BF16, AMX) or a GPU, faster. Refused where the
    hardware has no fast path for the type. A classifier is exported and
    compiled (inductor folds the weights into oneDNN's layout); an LM runs its
    transformers modules in that dtype."""

    method: ClassVar[str] = "half"
    dtype: str = "bf16"            # bf16 or fp16

    def __post_init__(self):
        super().__post_init__()
        _one_of("dtype", self.dtype, ("bf16", "fp16"))
        require(not self.exclude, f"{self.dtype} casts the whole model: exclude has no effect on it")

    def _name(self) -> str:
        return self.dtype


@dataclass(frozen=True)
class DynamicInt8(Recipe):
    """int8 weights, activations quantized per batch at run time. No calibration."""

    method: ClassVar[str] = "dynamic-int8"
    tasks: ClassVar[tuple[str, ...]] = ("sequence-classification",)
    # "auto" picks the fastest backend present: the PT2E x86 inductor path when
    # torch.compile works here, else torch.ao's fbgemm kernels (deprecated API).
    backend: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        _one_of("backend", self.backend, ("auto", "pt2e", "torch.ao"))

    def _name(self) -> str:
        return "dynamic" + ("" if self.backend == "auto" else f"-{self.backend}")


CALIBRATORS = ("minmax", "moving_average", "percentile", "mse", "entropy")


@dataclass(frozen=True)
class StaticInt8(Recipe):
    """int8 weights and activations; activation ranges observed on calibration data."""

    method: ClassVar[str] = "static-int8"
    needs_calibration: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("sequence-classification",)
    calibrator: str = "minmax"           # minmax, moving_average, percentile, mse, entropy
    percentile: float = 99.99            # used by the percentile calibrator
    per_channel_weights: bool = True
    symmetric_activations: bool = False  # zero point pinned mid-range instead of fitted
    num_samples: int = 256

    def __post_init__(self):
        super().__post_init__()
        _one_of("calibrator", self.calibrator, CALIBRATORS)
        require(isinstance(self.percentile, (int, float)) and 50 < self.percentile <= 100,
                f"percentile must be a number in (50, 100], got {self.percentile!r}")
        require(isinstance(self.per_channel_weights, bool),
                f"per_channel_weights must be true or false, got {self.per_channel_weights!r}")
        require(isinstance(self.symmetric_activations, bool),
                f"symmetric_activations must be true or false, got {self.symmetric_activations!r}")
        require(isinstance(self.num_samples, int) and self.num_samples >= 1,
                f"num_samples must be a positive integer, got {self.num_samples!r}")

    def _name(self) -> str:
        cal = "" if self.calibrator == "minmax" else f"-{self.calibrator}"
        return (f"static{cal}{'' if self.per_channel_weights else '-pertensor'}"
                f"{'-symact' if self.symmetric_activations else ''}")


@dataclass(frozen=True)
class QAT(Recipe):
    """Quantization-aware training: fake-quantized fine-tuning, then real int8.
    Weights on a `weight_bits` grid (8 or 4), activations int8."""

    method: ClassVar[str] = "qat"
    needs_training: ClassVar[bool] = True
    measured_against_ptq: ClassVar[bool] = True    # a comparison reports how much of PTQ's loss it recovered
    tasks: ClassVar[tuple[str, ...]] = ("sequence-classification",)
    weight_bits: int = 8
    epochs: int = 1
    steps: int = 0                 # > 0: stop after this many steps (overrides epochs)
    batch_size: int = 16
    lr: float = 2e-5
    precision: str = "auto"        # auto: fp16 + gradient scaler on CUDA, bf16 on a CPU with native bf16, else fp32
    device: str = "auto"           # where QAT trains: auto (CUDA when present), cpu, cuda
    freeze_ranges: bool = True     # calibrate ranges on 256 training examples, then keep them fixed while training
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        _one_of("weight_bits", self.weight_bits, (4, 8))
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            require(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        require(isinstance(self.steps, int) and self.steps >= 0, f"steps must be an integer >= 0, got {self.steps!r}")
        require(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        _one_of("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _one_of("device", self.device, ("auto", "cpu", "cuda"))
        require(isinstance(self.freeze_ranges, bool), f"freeze_ranges must be true or false, got {self.freeze_ranges!r}")

    def _name(self) -> str:
        return "qat" if self.weight_bits == 8 else f"qat-w{self.weight_bits}a8"


WEIGHT_ONLY_BITS = (2, 3, 4, 8)


@dataclass(frozen=True)
class WeightOnly(Recipe):
    """Weights stored in `bits` with one scale (and zero point) per output channel
    or per group of `group_size` input features; activations stay in float."""

    method: ClassVar[str] = "weight-only"
    stores_weights: ClassVar[bool] = True
    bits: int = 8
    group_size: int | None = None  # None: one scale per output channel
    symmetric: bool = field(default=True)
    scale_search: bool = False     # each channel's or group's range shrunk by the factor that rounds its weights best
    head_bits: int | None = None   # an output head tied to the embedding: None keeps it float; 8 or 4 stores an untied copy
    head_group_size: int | None = None   # the copy's groups (None: per channel at 8 bits, the recipe's groups at 4)

    def __post_init__(self):
        super().__post_init__()
        _one_of("bits", self.bits, WEIGHT_ONLY_BITS)
        _check_group(self.group_size)
        require(isinstance(self.symmetric, bool), f"symmetric must be true or false, got {self.symmetric!r}")
        require(isinstance(self.scale_search, bool), f"scale_search must be true or false, got {self.scale_search!r}")
        _check_head(self)

    def _name(self) -> str:
        g = f"-g{self.group_size}" if self.group_size else ""
        return (f"int{self.bits}{g}{'' if self.symmetric else '-asym'}{'-search' if self.scale_search else ''}"
                f"{_head(self)}")


HEAD_BITS = (None, 4, 8)


def _head(r) -> str:
    return (f"-head{r.head_bits}" + (f"g{r.head_group_size}" if r.head_group_size else "")) if r.head_bits else ""


def _head_flag(p: str, spec: str) -> tuple[int, int | None]:
    """head<b>[g<N>]: the tied head's bits and, optionally, its own group size."""
    bits, _, group = p[4:].partition("g")
    require(bits.isdigit() and (not group or group.isdigit()),
            f"cannot parse {p!r} in {spec!r}: expected head8, head4 or with a group size, e.g. head8g32")
    return int(bits), int(group) if group else None


def _check_head(r) -> None:
    _one_of("head_bits", r.head_bits, HEAD_BITS)
    _check_group(r.head_group_size)
    require(r.head_group_size is None or r.head_bits, "head_group_size needs head_bits (e.g. -head8g32)")


def _check_group(group_size) -> None:
    require(group_size is None or (isinstance(group_size, int) and group_size > 0),
            f"group_size must be a positive integer or null (per channel), got {group_size!r}")
    require(group_size is None or group_size % 8 == 0,
            f"group_size must be a multiple of 8 (e.g. 32, 64, 128), got {group_size}")


def _check_lm_calibration(r) -> None:
    require(isinstance(r.num_samples, int) and r.num_samples >= 1,
            f"num_samples must be a positive integer, got {r.num_samples!r}")
    require(isinstance(r.seq_len, int) and r.seq_len >= 8, f"seq_len must be an integer >= 8, got {r.seq_len!r}")


@dataclass(frozen=True)
class GPTQ(Recipe):
    """GPTQ (Frantar et al. 2022): weight-only int8..int2 whose roundings are
    chosen column by column to keep each layer's outputs on calibration data,
    using the inverse Hessian of the layer inputs. Layers are processed in
    order, each on the outputs of the already-quantized layers before it."""

    method: ClassVar[str] = "gptq"
    stores_weights: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("causal-lm",)
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = True
    act_order: bool = True         # group-aware act-order: important columns first (no format cost)
    scale_search: bool = True      # each group's range shrunk by the factor that rounds its weights best
    damp: float = 0.05             # added to the Hessian diagonal, as a share of its mean (GPTQModel's default)
    block_size: int = 128          # columns updated together (lazy batch updates)
    num_samples: int = 128         # calibration windows ...
    seq_len: int = 512             # ... of this many tokens
    device: str = "auto"           # where the work runs: auto (CUDA when present, one block at a time), cpu, cuda
    head_bits: int | None = None   # a tied output head: None keeps it float; 8 or 4 rounds an untied copy to nearest
    head_group_size: int | None = None   # the copy's groups (None: per channel at 8 bits, the recipe's groups at 4)
    states: str = "fp32"           # the calibration hidden states kept between blocks: fp32, or bf16 (half the
                                   # memory where they dominate; every block still computes in fp32)
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        _one_of("bits", self.bits, WEIGHT_ONLY_BITS)
        _one_of("device", self.device, ("auto", "cpu", "cuda"))
        _one_of("states", self.states, ("fp32", "bf16"))
        _check_head(self)
        _check_group(self.group_size)
        require(isinstance(self.symmetric, bool), f"symmetric must be true or false, got {self.symmetric!r}")
        require(isinstance(self.act_order, bool), f"act_order must be true or false, got {self.act_order!r}")
        require(isinstance(self.scale_search, bool), f"scale_search must be true or false, got {self.scale_search!r}")
        require(isinstance(self.damp, (int, float)) and 0 < self.damp < 1,
                f"damp must be a number in (0, 1), got {self.damp!r}")
        require(isinstance(self.block_size, int) and self.block_size >= 1,
                f"block_size must be a positive integer, got {self.block_size!r}")
        _check_lm_calibration(self)

    def _name(self) -> str:
        g = f"-g{self.group_size}" if self.group_size else ""
        return (f"gptq-int{self.bits}{g}{'' if self.act_order else '-noact'}{'' if self.scale_search else '-nosearch'}"
                f"{'' if self.symmetric else '-asym'}{_head(self)}{'-bf16states' if self.states == 'bf16' else ''}")


@dataclass(frozen=True)
class NF4(Recipe):
    """4-bit NormalFloat (QLoRA's data type): codes index 16 quantiles of a
    normal distribution, scaled by each block's absmax; double quantization
    stores those absmax values in int8 with one fp32 scale per `dq_block_size`."""

    method: ClassVar[str] = "nf4"
    stores_weights: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("causal-lm",)
    block_size: int = 64
    double_quant: bool = True
    dq_block_size: int = 256

    def __post_init__(self):
        super().__post_init__()
        require(isinstance(self.block_size, int) and self.block_size >= 2 and self.block_size % 2 == 0,
                f"block_size must be an even integer >= 2, got {self.block_size!r}")
        require(isinstance(self.double_quant, bool), f"double_quant must be true or false, got {self.double_quant!r}")
        require(isinstance(self.dq_block_size, int) and self.dq_block_size >= 1,
                f"dq_block_size must be a positive integer, got {self.dq_block_size!r}")

    def _name(self) -> str:
        return f"nf4{'' if self.block_size == 64 else f'-b{self.block_size}'}{'' if self.double_quant else '-nodq'}"


@dataclass(frozen=True)
class QLoRA(Recipe):
    """QLoRA: LoRA adapters (peft) trained on a frozen NF4 base, mixed precision.
    The adapters are saved separately, or merged into the weights (`merge`)."""

    method: ClassVar[str] = "qlora"
    needs_training: ClassVar[bool] = True
    tasks: ClassVar[tuple[str, ...]] = ("causal-lm",)
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    steps: int = 20
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 2e-4
    precision: str = "auto"        # auto: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32
    merge: bool = False
    block_size: int = 64           # the NF4 base
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        require(isinstance(self.targets, (list, tuple)) and len(self.targets) <= MAX_PATTERNS,
                f"targets must be a list of module names (e.g. [\"q_proj\", \"v_proj\"]), got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        for name in ("rank", "alpha", "steps", "batch_size"):
            v = getattr(self, name)
            require(isinstance(v, int) and v >= 1, f"{name} must be a positive integer, got {v!r}")
        require(isinstance(self.seq_len, int) and self.seq_len >= 8, f"seq_len must be an integer >= 8, got {self.seq_len!r}")
        require(isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1,
                f"dropout must be a number in [0, 1), got {self.dropout!r}")
        require(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        require(self.targets and all(isinstance(t, str) and t for t in self.targets),
                f"targets must be a list of module names, got {self.targets!r}")
        _one_of("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        require(isinstance(self.merge, bool), f"merge must be true or false, got {self.merge!r}")

    def _name(self) -> str:
        return f"qlora{'' if self.rank == 8 else f'-r{self.rank}'}{'-merged' if self.merge else ''}"


def recipe_grammar(task: str | None = None) -> str:
    """Every recipe name the CLI parses, for the kind of model (None: all). The
    names a comparison shows are these: a recipe's name parses back to its format."""
    cls = ["dynamic", "static[-<calibrator>][-pertensor][-symact] (calibrators: " + ", ".join(CALIBRATORS) + ")",
           "qat", "qat-w4a8"]
    woq = ["int<b>[-g<N>][-asym][-search]" + ("" if task == "sequence-classification" else "[-head<h>[g<N>]]")
           + " (b = 2, 3, 4, 8; N a multiple of 8; h = 4 or 8: a low-bit copy of a tied head, in its own groups "
             "with g<N>)"]
    lm = ["gptq[-int<b>][-g<N>][-noact][-nosearch][-asym][-head<h>[g<N>]][-bf16states] (default gptq-int4-g128; "
          "bf16states: calibration hidden states kept in bf16 between blocks)",
          "nf4[-b<N>][-nodq] (default block 64, double quantization)", "qlora[-r<N>][-merged] (default rank 8)"]
    half = ["bf16", "fp16"]
    parts = {"sequence-classification": half + cls + woq, "causal-lm": half + woq + lm}.get(task, half + cls + woq + lm)
    return "; ".join(parts) + "; or a .yaml/.json recipe file"
