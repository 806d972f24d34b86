"""Weight-only quantization, int8 to int2: weights stored low-bit with
per-channel or per-group scales, activations in float.

Storage is one canonical format for every method that produces integer codes
(round-to-nearest here, GPTQ in gptq.py): unsigned codes densely packed
(formats/packing.py), fp16 scales, and for asymmetric formats integer zero
points packed at the same width. A symmetric format stores no zero points (they
are 2^(bits-1)). A group size that does not divide the input features gives a
shorter last group.

Which kernel runs depends on the rows per call and on the CPU: the packed CPU
kernels take bf16 activations, and where the CPU has no native bf16 they are fast
only for a few rows (decode-like calls); with native bf16 (AVX512-BF16, AMX)
they beat dequantizing at thousands of rows. So the crossover is measured, once
per process and kernel (`packed_max_rows`, bench/packed_rows.py), never assumed:

- up to packed_max_rows() rows: aten._weight_int8pack_mm (int8, per channel,
  symmetric) or aten._weight_int4pack_mm_for_cpu for any format of 4 bits or
  fewer (3- and 2-bit codes are valid 4-bit codes; the kernel's per-group zero
  absorbs the zero point) with a group size of 32/64/128/256; a width the
  group does not divide is zero-padded for the kernel (576 = 4.5 x 128)
- more rows (a prefill, an encoder's batch x sequence), or a model moved to a
  GPU (these kernels are CPU kernels): dequantize, then an fp32 matmul

Each layer counts the calls that took each path, so a report says what ran.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time
from collections import Counter

import torch

from ..formats.affine import QParams, grouped, minmax_range, qparams_from_range, quantize
from ..formats.packing import pack_bits, packed_width, unpack_bits
from ..recipes import WeightOnly
from .common import INT8_KEPT, Quantized, float_operators, select_linears

INT4_KERNEL_GROUPS = (32, 64, 128, 256)


def packed_copy_bits(bits: int, group_size: int | None, symmetric: bool = True) -> float:
    """Bits per weight of the packed kernel's own layout, which a layer builds on first use and holds
    beside its stored codes (see `_packed_args`): 4 + bf16 scale and zero per group for int4, 8 + a bf16
    scale per row (about 8) for int8 per channel; 0 where the layer always dequantizes."""
    if bits == 8 and group_size is None and symmetric:
        return 8
    if bits <= 4 and group_size in INT4_KERNEL_GROUPS:
        return 4 + 32 / group_size
    return 0
PACK_ROWS_ELEMENTS = 1 << 22   # weights rounded and packed at a time (bounds the temporaries to ~100 MB)
ROW_STEPS = (1, 16, 64, 256, 1024, 4096)      # call sizes the crossover is measured at
ROWS_ENV = "QUANTGATE_PACKED_MAX_ROWS"        # a fixed crossover instead of the measured one (0: always dequantize)
DEQUANT = "dequantize + fp32 matmul"
INT8_KERNEL = "aten._weight_int8pack_mm (bf16 activations)"
INT4_KERNEL = "aten._weight_int4pack_mm_for_cpu (bf16 activations)"


def fp16_scales(qp: QParams) -> QParams:
    """The stored scales are fp16: quantize with exactly the scale that is stored."""
    qp.scale = qp.scale.to(torch.float16).float()
    return qp


SEARCH_SHRINKS = torch.tensor([1 - 0.025 * i for i in range(11)])   # 1, 0.975, ..., 0.75


def rtn_qparams(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                search: bool = False) -> QParams:
    """Scales (stored in fp16) and zero points per channel or group of `w` [N, K].

    Min-max by default. With `search`, each channel's (or group's) range is
    shrunk by the factor in SEARCH_SHRINKS that minimizes the squared rounding
    error of its weights (the first, 1, on ties): clipping a few outliers rounds
    the rest finer. It is the scale search of the GPTQ authors' reference code
    (`mse` there, 100 shrinks and |error|^2.4; GPTQModel leaves it off by
    default); 11 shrinks and squares gave the same GPTQ layer errors on SmolLM2
    as 21 shrinks and |error|^2.4 (within 0.3%) at a quarter of the cost.
    Lower weight error is not always lower output error: for round-to-nearest
    on SmolLM2 it pays at 3 bits and not at 4 (BENCHMARKS.md), so the
    WeightOnly recipe leaves it off unless asked; GPTQ uses it by default."""
    w = w.detach().float()
    gran = "group" if group_size else "channel"
    lo, hi = minmax_range(w, gran, group_size)                        # [N, 1] or [N, groups]
    if not search:
        return fp16_scales(qparams_from_range(lo, hi, bits, symmetric, gran, group_size))
    x = grouped(w, group_size) if group_size else w[:, None, :]      # [N, groups, g]; padding rounds to 0 exactly
    p = SEARCH_SHRINKS.to(w.device)[:, None, None]                   # [S, 1, 1]
    scale, zero = torch.empty_like(lo), torch.empty_like(lo, dtype=torch.int32)
    rows = max(1, 2**24 // (len(SEARCH_SHRINKS) * x.shape[1] * x.shape[2]))   # bound the [S, rows, groups, g] work
    for r in range(0, w.shape[0], rows):
        qp = fp16_scales(qparams_from_range(lo[r:r + rows] * p, hi[r:r + rows] * p, bits, symmetric, gran, group_size))
        s, z = qp.scale[..., None], qp.zero_point[..., None].float()  # [S, rows, groups, 1]
        xr = x[r:r + rows]
        c = torch.clamp(torch.round(xr * (1.0 / s)) + z, qp.qmin, qp.qmax)
        best = (xr - (c - z) * s).square_().sum(-1).argmin(0, keepdim=True)   # [1, rows, groups]
        scale[r:r + rows] = qp.scale.gather(0, best)[0]
        zero[r:r + rows] = qp.zero_point.gather(0, best)[0]
    return QParams(scale, zero, bits, symmetric, gran, group_size)


class WeightOnlyLinear(torch.nn.Module):
    """A Linear layer whose weight is stored as packed integer codes.

    `WeightOnlyLinear(linear, bits, group_size, symmetric)` rounds to nearest;
    pass `qp` (and `codes`) to store codes another method chose (GPTQ)."""

    def __init__(self, linear: torch.nn.Linear, bits: int, group_size: int | None, symmetric: bool,
                 qp: QParams | None = None, codes: torch.Tensor | None = None, search: bool = False):
        super().__init__()
        n, k = linear.out_features, linear.in_features
        self._setup(k, n, bits, group_size, symmetric, linear.bias is not None)
        w = linear.weight.detach().float()
        qp = qp or rtn_qparams(w, bits, group_size, symmetric, search)
        # rows at a time: rounding and packing make full-size float and int64 temporaries, which for a
        # large output head (49k x 4k) would be gigabytes at once
        step = max(1, PACK_ROWS_ELEMENTS // max(1, k))
        self.qweight = torch.cat([
            pack_bits(((quantize(w[r:r + step], qp.rows(r, r + step)) if codes is None else
                        codes[r:r + step].to(torch.int32)) - qp.qmin).to(torch.uint8), bits)
            for r in range(0, n, step)])
        self.scales = qp.scale.to(torch.float16).reshape(n, -1).contiguous()
        if not symmetric:
            self.zero_points = pack_bits((qp.zero_point - qp.qmin).to(torch.uint8).reshape(n, -1), bits)
        if linear.bias is not None:
            self.bias = torch.nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)

    def _setup(self, k: int, n: int, bits: int, group_size: int | None, symmetric: bool, has_bias: bool):
        self.in_features, self.out_features = k, n
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        groups = math.ceil(k / group_size) if group_size else 1
        self.register_buffer("qweight", torch.zeros(n, packed_width(k, bits), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(n, groups, dtype=torch.float16))
        if not symmetric:
            self.register_buffer("zero_points", torch.zeros(n, packed_width(groups, bits), dtype=torch.uint8))
        self.bias = torch.nn.Parameter(torch.zeros(n), requires_grad=False) if has_bias else None
        if bits == 8 and group_size is None and symmetric:
            self.packed_kernel = INT8_KERNEL
        elif bits <= 4 and group_size in INT4_KERNEL_GROUPS:
            self.packed_kernel = INT4_KERNEL
        else:
            self.packed_kernel = None
        self._packed = None
        self.calls = Counter()

    @classmethod
    def empty(cls, in_features: int, out_features: int, bits: int, group_size: int | None, symmetric: bool,
              bias: bool) -> "WeightOnlyLinear":
        """A layer of the right shapes whose buffers a saved state dict fills."""
        m = cls.__new__(cls)
        torch.nn.Module.__init__(m)
        m._setup(in_features, out_features, bits, group_size, symmetric, bias)
        return m

    @property
    def kernel(self) -> str:
        if self.packed_kernel:
            return f"{self.packed_kernel} for {rows_phrase(packed_max_rows(self.packed_kernel))}, else {DEQUANT}"
        return DEQUANT

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def codes(self) -> torch.Tensor:
        """Unsigned integer codes, [N, K]."""
        return unpack_bits(self.qweight, self.bits, self.in_features)

    def zeros(self) -> torch.Tensor:
        """Unsigned zero points, [N, groups]."""
        if self.symmetric:
            return torch.full(self.scales.shape, 2 ** (self.bits - 1), dtype=torch.uint8, device=self.scales.device)
        return unpack_bits(self.zero_points, self.bits, self.n_groups)

    def dequantized_weight(self) -> torch.Tensor:
        n, k = self.out_features, self.in_features
        scales, zeros = self.scales.float(), self.zeros().float()
        if self.group_size is None:
            return (self.codes().float() - zeros) * scales
        g, groups = self.group_size, self.n_groups
        c = self.codes().float()
        if groups * g != k:
            c = torch.nn.functional.pad(c, (0, groups * g - k))
        w = (c.view(n, groups, g) - zeros[..., None]) * scales[..., None]
        return w.view(n, groups * g)[:, :k]

    def _packed_args(self):
        """The packed kernel's layout, built on first use."""
        if self._packed is None:
            if self.bits == 8:
                codes = self.codes().to(torch.int16) - 128                # symmetric: signed codes
                self._packed = (codes.to(torch.int8).contiguous(), self.scales.reshape(-1).bfloat16())
            else:
                # tinygemm computes (u - 8) * scale + zero per group; ours is (u - zp) * scale.
                # Below 4 bits, u - zp + 8 is itself a 4-bit code and the zero is exactly 0;
                # at 4 bits the zero carries (8 - zp) * scale, rounded to bf16.
                scales, zp = self.scales.float(), self.zeros().to(torch.int32)
                u = self.codes().to(torch.int32)
                if self.bits < 4:
                    u = u - zp.repeat_interleave(self.group_size, dim=1)[:, :self.in_features] + 8
                    zero = torch.zeros_like(scales)
                else:
                    zero = (8 - zp.float()) * scales
                sz = torch.stack([scales, zero], dim=-1).transpose(0, 1).contiguous().bfloat16()
                k_pad = self.n_groups * self.group_size
                if k_pad != self.in_features:   # a shorter last group: zero-pad the width for the kernel
                    u = torch.nn.functional.pad(u, (0, k_pad - self.in_features), value=8)
                self._packed = (torch.ops.aten._convert_weight_to_int4pack_for_cpu(u, 1), sz)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if self.packed_kernel and x2.device.type == "cpu" and x2.shape[0] <= packed_max_rows(self.packed_kernel):
            y = packed_matmul(x2, self.packed_kernel, *self._packed_args(), self.group_size, self.in_features).float()
            self.calls[self.packed_kernel] += 1
        else:
            y = torch.nn.functional.linear(x2.float(), self.dequantized_weight())
            self.calls[DEQUANT] += 1
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, int{self.bits}, group={self.group_size}, "
                f"{'symmetric' if self.symmetric else 'asymmetric'}, kernel={self.kernel}")


def packed_matmul(x2: torch.Tensor, kernel: str, w: torch.Tensor, s: torch.Tensor, group_size: int | None,
                  in_features: int) -> torch.Tensor:
    """[rows, K] float activations times a packed weight (`_packed_args` layout,
    or several of them concatenated along N): bf16 in, bf16 out (converting it
    to fp32, or adding it to an fp32 tensor, is exact)."""
    xb = x2.to(torch.bfloat16)
    if kernel == INT8_KERNEL:
        return torch.ops.aten._weight_int8pack_mm(xb.contiguous(), w, s)
    k_pad = s.shape[0] * group_size
    if k_pad != in_features:                  # a shorter last group: the kernel sees zero-padded widths
        xb = torch.nn.functional.pad(xb, (0, k_pad - in_features))
    return torch.ops.aten._weight_int4pack_mm_for_cpu(xb.contiguous(), w, group_size, s)


def packed_max_rows(kernel: str) -> float:
    """The most rows per call for which `kernel` (INT8_KERNEL or INT4_KERNEL) runs faster than
    dequantize + fp32 matmul on this CPU: the largest of ROW_STEPS up to which it wins at every
    step (inf where it wins at all of them, 0 where it loses even at one row). Measured once per
    process on a 1024 x 1024 layer, with the threads torch uses then; $QUANTGATE_PACKED_MAX_ROWS
    fixes it instead."""
    fixed = os.environ.get(ROWS_ENV)
    if fixed is not None:
        return float(fixed)
    return _measured_rows(kernel)


@functools.cache
def _measured_rows(kernel: str) -> float:
    g = torch.Generator().manual_seed(0)           # its own generator: the caller's random state stays as it was
    lin = torch.nn.utils.skip_init(torch.nn.Linear, 1024, 1024, bias=False)
    lin.weight.data = torch.randn(1024, 1024, generator=g) / 32
    q = WeightOnlyLinear(lin, 8, None, True) if kernel == INT8_KERNEL else WeightOnlyLinear(lin, 4, 128, False)
    args = q._packed_args()
    packed = lambda x: packed_matmul(x, kernel, *args, q.group_size, 1024)                  # noqa: E731
    dequant = lambda x: torch.nn.functional.linear(x, q.dequantized_weight())              # noqa: E731
    best = 0.0
    with torch.inference_mode():
        for rows in ROW_STEPS:
            x = torch.randn(rows, 1024, generator=g)
            if median_seconds(packed, x) > median_seconds(dequant, x):
                return best
            best = float(rows)
    return math.inf


def median_seconds(f, x, reps: int = 3) -> float:
    """Median wall time of f(x) over `reps` calls, after one warm-up call (the kernels' first call sets up)."""
    f(x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(x)
        times.append(time.perf_counter() - t)
    return sorted(times)[reps // 2]


def rows_phrase(limit: float) -> str:
    return ("calls of any size" if limit == math.inf else "no call" if limit < 1 else f"calls of <= {int(limit)} rows") \
        + (" (fixed by $" + ROWS_ENV + ")" if os.environ.get(ROWS_ENV) is not None else " (measured on this CPU)")


def kernel_calls(module: torch.nn.Module) -> dict[str, int]:
    """How many layer calls took each path since quantization."""
    total = Counter()
    for m in module.modules():
        if hasattr(m, "calls") and isinstance(m.calls, Counter):
            total.update(m.calls)
    return dict(total)


def set_module(root: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def kernel_summary(layers) -> str:
    kernels = Counter(m.kernel for m in layers)
    return ", ".join(f"{k} x{n}" for k, n in kernels.most_common())


def apply(model, recipe: WeightOnly, calibration=None, train=None) -> Quantized:
    qm = copy.deepcopy(model.module)
    targets, kept = select_linears(qm, recipe)
    new_layers = []
    for name, lin in targets.items():
        new = WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric, search=recipe.scale_search)
        new_layers.append(new)
        set_module(qm, name, new)
    quantize_head(qm, recipe, targets, kept, new_layers)
    return finish(model, qm, recipe, targets, kept, new_layers)


def quantize_head(qm, recipe, targets: dict, kept: dict, new_layers: list) -> None:
    """With `recipe.head_bits`, an output head tied to the input embedding gets
    its own copy rounded to nearest: int8 per channel or int4 in the recipe's
    groups, symmetric (both have packed kernels), or in `head_group_size`
    groups (int8 in groups of 32 is GGUF's Q8_0, as llama.cpp stores a head). The embedding stays float for
    lookups, so the file holds the head twice: once float, once low-bit. At
    batch 1 the fp32 head is the largest single matmul of a small model."""
    if not recipe.head_bits:
        return
    tied = [n for n, why in kept.items() if why.startswith("output head tied")]
    for name in tied:
        lin = qm.get_submodule(name)
        group = recipe.head_group_size or (None if recipe.head_bits == 8 else (recipe.group_size or 128))
        new = WeightOnlyLinear(lin, recipe.head_bits, group, True)
        set_module(qm, name, new)
        new_layers.append(new)
        targets[name] = lin
        del kept[name]


def keep_int8(q: Quantized) -> None:
    """The recipe's int8_layers, which the method left in float, rounded to int8 per channel
    (symmetric, packed kernel): mixed precision, one format per layer, as artifacts store it."""
    from ..methods.nf4 import NF4Linear
    names = [n for n, why in q.float_layers.items() if why.startswith(INT8_KEPT)]
    for name in names:
        set_module(q.module, name, WeightOnlyLinear(q.module.get_submodule(name), 8, None, True))
        del q.float_layers[name]
        q.quantized_layers.append(name)
    if names:
        q.kernel = kernel_summary([m for m in q.module.modules() if isinstance(m, (WeightOnlyLinear, NF4Linear))])
        q.notes.append(f"{len(names)} layer(s) stored as int8 per channel instead of {q.recipe._name()} "
                       f"(int8_layers): {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}")


def finish(model, qm, recipe, targets, kept, new_layers, calibration=None) -> Quantized:
    """The Quantized record every weight-only method returns."""
    limits = {k: packed_max_rows(k) for k in {m.packed_kernel for m in new_layers} if k}
    notes = [f"{k.split(' ')[0]} serves {rows_phrase(v)}; larger calls dequantize the weights and run an fp32 "
             "matmul, which saves memory but not time" for k, v in limits.items()]
    slow = sum(1 for m in new_layers if not m.packed_kernel)
    if slow:
        notes.append(f"{slow} layer(s) have no packed kernel for int{recipe.bits}, group {recipe.group_size}: "
                     "they always dequantize before an fp32 matmul")
    float_ops = float_operators(model.module, "weight-only quantization (activations stay float)")
    return Quantized(qm.eval(), recipe, list(targets), kept, kernel_summary(new_layers), calibration=calibration,
                     notes=notes, float_ops=float_ops)
