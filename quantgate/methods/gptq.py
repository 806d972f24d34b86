"""GPTQ (Frantar et al., 2022): weight-only quantization whose roundings keep
each layer's outputs on calibration data.

For a Linear layer with inputs X, GPTQ quantizes the weight one column at a
time and spreads each column's rounding error over the columns not yet
quantized, weighted by the inverse Hessian H^-1 of the layer-wise loss
||WX - QX||^2 (H = 2 X X^T / n, dampened by `damp` x mean(diag H)). Columns
are processed in blocks of `block_size` with lazy updates. With act_order,
columns go in order of decreasing diag(H) within each group, and groups in
order of their most important column ("group-aware" act-order, as GPTQModel
does by default): each group stays contiguous, its scale is chosen from the
updated weights when it starts, and the stored format stays the plain one,
with no per-column group index. With scale_search (the recipe's default), that
scale comes from the range shrink that rounds the group's weights best rather
than from min-max.

Calibration activations are captured sequentially: one pass of the model's
own forward, with every block replaced by a recorder that passes its input
through, records the hidden states entering the first block and each block's
own call arguments (its attention mask, rotary embedding, position ids: blocks
are not interchangeable in families that alternate sliding-window and global
attention, each with its own mask and rotary base); each block then runs once
on all calibration windows with its own arguments, and a pre-hook on each of
its Linear layers accumulates that layer's Hessian from the input it is about
to receive, quantizes the weight, and lets the call go on with the quantized
weight. So every layer sees the outputs of the layers already quantized before
it (in-block order too), one forward pass per block, and the block's outputs
feed the next block. Peak memory is the
model plus one block's work on the calibration batch (estimated, and refused
with the numbers, before the run).
"""

from __future__ import annotations

import copy
import math
import time

import psutil
import torch

from ..calibration import lm_windows
from ..errors import QuantgateError, require
from ..formats.affine import QParams
from ..progress import progress
from ..recipes import GPTQ
from .common import Quantized, compute_device, select_linears
from .weight_only import WeightOnlyLinear, finish, quantize_head, rtn_qparams, set_module


def gptq_weight(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = True,
                act_order: bool = False, damp: float = 0.01, block_size: int = 128,
                scale_search: bool = False) -> tuple[torch.Tensor, QParams]:
    """Integer codes [N, K] (signed range for symmetric) and their QParams for
    weight `w` [N, K] given the input Hessian `h` [K, K]."""
    w = w.detach().float().clone()
    h = h.detach().float().clone()
    n, k = w.shape
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    g = group_size or k
    n_groups = math.ceil(k / g)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    dev = w.device
    scales = torch.zeros(n, n_groups, device=dev)
    zeros = torch.zeros(n, n_groups, device=dev)
    d = torch.diag(h)
    groups = list(range(n_groups))
    if act_order and group_size:
        # Group-aware act-order: groups by their most important column, and columns by importance
        # within each group. A group stays contiguous, so its scale is still chosen when it starts,
        # from the weights as updated so far, and the stored format needs no per-column group index.
        groups.sort(key=lambda j: -d[j * g:(j + 1) * g].max().item())
        perm = torch.cat([j * g + torch.argsort(d[j * g:(j + 1) * g], descending=True) for j in groups])
    elif act_order:
        perm = torch.argsort(d, descending=True)
    else:
        perm = torch.arange(k, device=dev)
    starts, pos = {}, 0        # position in the processing order -> (group, its width)
    for j in groups:
        starts[pos] = (j, min(g, k - j * g))
        pos += starts[pos][1]
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, device=dev)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise QuantgateError(f"GPTQ: the Hessian of a {n}x{k} layer is not positive definite even with damp={damp}; "
                             "raise damp (e.g. 0.1) or give more calibration data") from None
    qt = torch.zeros(k, n, device=dev)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # the column loop is many small ops: threads cost more than they give (4x here)
    try:
        _columns(w.T.contiguous(), hinv, qt, scales, zeros, starts, bits, symmetric, qmin, qmax, block_size,
                 scale_search)
    finally:
        torch.set_num_threads(threads)
    q = qt.T[:, torch.argsort(perm)].to(torch.int32)
    qp = QParams(scales, zeros.to(torch.int32), bits, symmetric, "group" if group_size else "channel", group_size)
    return q, qp


def _columns(wt, hinv, qt, scales, zeros, starts, bits, symmetric, qmin, qmax, block_size, search):
    """The GPTQ column loop, in blocks with lazy updates, on the transposed weight
    wt [K, N] (in place on wt, qt, scales, zeros): a column of W is a contiguous
    row here, so each rank-1 error update runs on contiguous memory (2x faster
    than on W's strided columns, measured)."""
    k = wt.shape[0]
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, hinv1 = wt[i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.empty_like(w1)
        for i in range(i2 - i1):
            col = i1 + i
            if col in starts:          # a group starts: its scale from the weights as updated so far
                gi, width = starts[col]
                block = torch.cat([w1[i:i + width], wt[i2:i2 + max(0, width - (i2 - col))]])
                qp = rtn_qparams(block.T, bits, None, symmetric, search)   # per row of the group's block
                s, z = qp.scale[:, 0], qp.zero_point[:, 0].float()
                scales[:, gi], zeros[:, gi] = s, z
                inv_s = 1.0 / s
            x = w1[i]
            c = torch.clamp(torch.round(x * inv_s) + z, qmin, qmax)
            qt[col] = c
            e = (x - (c - z) * s) / hinv1[i, i]
            w1[i + 1:].addr_(hinv1[i, i + 1:], e, alpha=-1)
            err1[i] = e
        wt[i2:] -= hinv[i1:i2, i2:].T @ err1


def hessian(x: torch.Tensor) -> torch.Tensor:
    """2 X^T X / n for inputs x [..., K]. BLAS's symmetric rank-k update computes
    half the product: 1.2-1.7x faster than a full matmul here (measured)."""
    x2 = x.reshape(-1, x.shape[-1]).float().contiguous()
    if x2.device.type != "cpu":
        return (x2.T @ x2) * (2.0 / x2.shape[0])
    try:
        from scipy.linalg import blas
        upper = torch.from_numpy(blas.ssyrk(2.0 / x2.shape[0], x2.numpy().T, trans=0))
        return torch.triu(upper) + torch.triu(upper, 1).T
    except ImportError:
        return (x2.T @ x2) * (2.0 / x2.shape[0])


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """||X (W - Q)^T|| / ||X W^T|| over all calibration inputs X, from their
    Hessian h = 2 X^T X / n: (N K^2 work instead of a matmul over every input row)."""
    w, q = w.detach().float(), q.detach().float()
    d = w - q
    return math.sqrt(float(((d @ h) * d).sum()) / max(float(((w @ h) * w).sum()), 1e-30))


# -- the sequential pass over a decoder ---------------------------------------

def decoder_blocks(module: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The decoder's stack of blocks: the longest ModuleList of modules that hold Linear layers."""
    best = None
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) and all(
                any(isinstance(x, torch.nn.Linear) for x in b.modules()) for b in m):
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    require(best is not None, "GPTQ needs a model made of a stack of blocks with Linear layers (a decoder); "
                              f"found none in {type(module).__name__}")
    return best


def fitting_chunk(n: int, need, available: int) -> tuple[int, int]:
    """The most of n calibration windows per block forward (all, then halving down to one) whose
    `need(chunk)` bytes fit in `available`: (chunk, need); chunk 0 when even one does not fit."""
    c = n
    while True:
        b = need(c)
        if b <= available:
            return c, b
        if c == 1:
            return 0, b
        c = (c + 1) // 2


def block_work_bytes(cfg, windows: int, seq: int, states: str = "fp32") -> int:
    """One block's activations on `windows` windows of `seq` tokens (MLP, attention scores), and
    with bf16 states the fp32 copies of its input and output."""
    hidden = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    copies = 2 * hidden if states == "bf16" else 0
    return windows * seq * (4 * inter + 6 * hidden + copies) * 4 + windows * cfg.num_attention_heads * seq * seq * 4


STATE_BYTES = {"fp32": 4, "bf16": 2}
STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def estimate_peak_bytes(model_module: torch.nn.Module, windows: torch.Tensor, chunk: int | None = None,
                        states: str = "fp32") -> dict:
    """What a GPTQ run holds at its peak: the model, the quantized copy, the
    hidden states entering and leaving a block for all windows (in `states`), and one
    block's work on `chunk` of them at a time (MLP activations, attention, Hessians)."""
    cfg = model_module.config
    n, seq = windows.shape
    hidden = cfg.hidden_size
    inter = getattr(cfg, "intermediate_size", 4 * hidden)
    tokens = n * seq
    model = sum(p.numel() * p.element_size() for p in model_module.parameters())
    parts = {
        "model (fp32) and its copy being quantized": 2 * model,
        f"hidden states in and out of a block ({states})": 2 * tokens * hidden * STATE_BYTES[states],
        f"one block's activations on {chunk or n} windows at a time": block_work_bytes(cfg, chunk or n, seq, states),
        "Hessians": 2 * max(hidden, inter) ** 2 * 4,
    }
    return {"total": sum(parts.values()), "parts": parts, "chunk": chunk or n}


def check_memory(model_module: torch.nn.Module, windows: torch.Tensor, available: int | None = None,
                 states: str = "fp32") -> dict:
    """The estimate with the most windows per block forward that fits (all of them where they fit);
    refused, with the numbers, when even one window at a time does not."""
    avail = psutil.virtual_memory().available if available is None else available
    need = lambda c: estimate_peak_bytes(model_module, windows, c, states)["total"]    # noqa: E731
    chunk, _ = fitting_chunk(windows.shape[0], need, avail)
    est = estimate_peak_bytes(model_module, windows, chunk or 1, states)
    if chunk:
        est["available"] = avail
        return est
    gb = lambda b: f"{b / 2**30:.2f} GB"                # noqa: E731
    parts = "; ".join(f"{k} {gb(v)}" for k, v in est["parts"].items())
    raise QuantgateError(
        f"GPTQ would need about {gb(est['total'])} of memory at its peak but {gb(avail)} is available "
        f"({parts}); lower num_samples ({windows.shape[0]}) or seq_len ({windows.shape[1]})"
        + ("" if states == "bf16" else ", or keep the calibration states in bf16 (-bf16states)"))


def gpu_bytes(model_module: torch.nn.Module, windows: torch.Tensor, chunk: int | None = None,
              states: str = "fp32") -> int:
    """GPU memory of GPTQ on a GPU, `chunk` windows per block forward: only the hidden states, one
    block's work and one block (in fp32, and its quantized weights written back) live there."""
    block = 2 * max(sum(p.numel() for p in b.parameters()) for b in decoder_blocks(model_module)[1]) * 4
    return block + sum(v for k, v in estimate_peak_bytes(model_module, windows, chunk, states)["parts"].items()
                       if not k.startswith("model"))


def check_gpu_memory(model_module: torch.nn.Module, windows: torch.Tensor, states: str = "fp32") -> int:
    """The most windows per block forward that fit in the GPU's free memory, or refused with the numbers."""
    free = torch.cuda.mem_get_info()[0]
    chunk, need = fitting_chunk(windows.shape[0], lambda c: gpu_bytes(model_module, windows, c, states), free)
    if chunk:
        return chunk
    gb = lambda b: f"{b / 2**30:.2f} GB"                # noqa: E731
    raise QuantgateError(f"GPTQ on the GPU would need about {gb(need)} of GPU memory but {gb(free)} is free; "
                         f"lower num_samples ({windows.shape[0]}) or seq_len ({windows.shape[1]}), or use device: cpu")


def _to(x, dev):
    """Tensors in nested tuples, lists and dicts, moved to `dev`."""
    if isinstance(x, torch.Tensor):
        return x.to(dev)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, dev) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, dev) for k, v in x.items()}
    return x


class _Capture(Exception):
    pass


@torch.inference_mode()
def block_calls(module: torch.nn.Module, blocks: torch.nn.ModuleList, windows: torch.Tensor):
    """The hidden states entering the first block for all windows, and for every
    block the other arguments the model's forward gives it: [(args, kwargs)], one
    per block. The blocks themselves do not run (each passes its input through),
    so this costs the embedding, the masks and the rotary tables only."""
    calls: list = [None] * len(blocks)
    first = {}

    def recorder(i):
        def forward(*args, **kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if i == 0:
                first["hidden"] = hidden
            calls[i] = (tuple(args[1:]), kwargs)
            if i == len(blocks) - 1:
                raise _Capture
            return hidden
        return forward

    for i, b in enumerate(blocks):
        b.forward = recorder(i)          # an instance attribute: nn.Module calls it instead of the class's
    try:
        module(input_ids=windows, use_cache=False)
    except _Capture:
        pass
    finally:
        for b in blocks:
            del b.forward
    missing = [i for i, c in enumerate(calls) if c is None]
    require(not missing, f"GPTQ: the model's forward never called block(s) {missing[:5]} of its decoder stack; "
                         "this architecture is not supported by the sequential pass")
    return first["hidden"], calls


def quantize_block(block: torch.nn.Module, names: dict[int, str], hidden: torch.Tensor, call, recipe: GPTQ,
                   dev: torch.device, errors: dict[str, float], chunk: int | None = None) -> tuple[torch.Tensor, list]:
    """GPTQ on one decoder block: run it on the calibration hidden states, each target Linear
    (`names`: id -> full name) quantized from its input Hessian just before it runs, so the rest
    of the block sees the quantized weights. Returns the block's output hidden states and the
    [(name, WeightOnlyLinear)] it made; each layer's output error goes into `errors`. The block
    runs on `dev` and goes back to the CPU (the in-memory and the streaming path both use it).

    `chunk` windows at a time (None: all at once) bounds the block's working memory (its MLP
    activations over every calibration token are the largest part at 7B): the block then runs
    once per group of layers that share an input (q/k/v, o, gate/up, down in a Llama block),
    over all chunks, summing that group's Hessian, stopping after the group; then the group is
    quantized, and a last pass gives the outputs. The same Hessians as one pass, summed in
    another order: the same GPTQ, for a few more partial forwards."""
    made = []

    def quantize(lin, h):
        q, qp = gptq_weight(lin.weight, h, recipe.bits, recipe.group_size, recipe.symmetric,
                            recipe.act_order, recipe.damp, recipe.block_size, recipe.scale_search)
        qp.scale, qp.zero_point = qp.scale.cpu(), qp.zero_point.cpu()
        new = WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric, qp=qp, codes=q.cpu()).to("cpu")
        with torch.no_grad():
            dq = new.dequantized_weight().to(lin.weight.device)
            errors[names[id(lin)]] = output_error(lin.weight, dq, h)
            lin.weight.copy_(dq)                # the rest of this block runs on the quantized weight
        made.append((names[id(lin)], new))

    n = hidden.shape[0]
    chunk = n if not chunk or chunk >= n else chunk
    block.to(dev)
    try:
        with torch.inference_mode():
            if chunk < n:
                _quantize_by_groups(block, names, hidden, call, dev, chunk, quantize)
                return torch.cat([_block_out(block, hidden[i:i + chunk], _to(window_rows(call, i, i + chunk, n), dev))
                                  for i in range(0, n, chunk)]), made
            hessians: dict[str, torch.Tensor] = {}   # the last input seen and its Hessian (shared by q/k/v, gate/up)

            def pre_hook(lin, inputs):
                x = inputs[0]
                if hessians.get("x") is not x:      # holding x keeps its memory from being reused by another input
                    hessians["x"], hessians["h"] = x, hessian(x)
                quantize(lin, hessians["h"])
            hooks = [m.register_forward_pre_hook(pre_hook) for m in block.modules() if id(m) in names]
            try:
                return _block_out(block, hidden, _to(call, dev)), made
            finally:
                for hk in hooks:
                    hk.remove()
    finally:
        block.to("cpu")


class _GroupDone(Exception):
    """Raised inside a block's forward once the group being calibrated has its input."""


def _block_out(block, hidden, call):
    """The block's output on `hidden`, computed in fp32 and kept in the states' dtype (fp32 or bf16)."""
    args, kwargs = call
    out = block(hidden.float(), *args, **kwargs)
    return (out[0] if isinstance(out, (tuple, list)) else out).to(hidden.dtype)


def window_rows(x, i: int, j: int, n: int):
    """Rows i:j of every tensor in nested args whose first dimension is the n windows."""
    if isinstance(x, torch.Tensor):
        return x[i:j] if x.dim() and x.shape[0] == n else x
    if isinstance(x, (tuple, list)):
        return type(x)(window_rows(v, i, j, n) for v in x)
    if isinstance(x, dict):
        return {k: window_rows(v, i, j, n) for k, v in x.items()}
    return x


def _quantize_by_groups(block, names, hidden, call, dev, chunk: int, quantize) -> None:
    """The chunked form of quantize_block's pass: per group of target layers sharing an input, in
    the order the block calls them, the block runs over every chunk up to that group, summing
    X^T X over all calibration tokens; then the group is quantized from 2 X^T X / tokens."""
    n, todo = hidden.shape[0], set(names)
    while todo:
        st = {"group": [], "x": None, "sum": None, "rows": 0, "finding": True}

        def pre_hook(lin, inputs):
            if id(lin) not in todo:
                return                              # quantized already: runs on its quantized weight
            x, group = inputs[0], st["group"]
            if st["finding"] and group and x is not st["x"]:
                raise _GroupDone                    # the next group's input: this group is complete
            if st["finding"] and not group:
                st["x"] = x
            if st["finding"]:
                group.append(lin)
            if lin is group[0]:                     # the group's one input, once per chunk
                x2 = x.reshape(-1, x.shape[-1])
                xtx = hessian(x2) * (x2.shape[0] / 2)
                st["sum"] = xtx if st["sum"] is None else st["sum"] + xtx
                st["rows"] += x2.shape[0]
            if not st["finding"] and lin is group[-1]:
                raise _GroupDone
        hooks = [m.register_forward_pre_hook(pre_hook) for m in block.modules() if id(m) in names]
        try:
            for i in range(0, n, chunk):
                try:
                    _block_out(block, hidden[i:i + chunk], _to(window_rows(call, i, i + chunk, n), dev))
                except _GroupDone:
                    pass
                st["finding"], st["x"] = False, None
        finally:
            for hk in hooks:
                hk.remove()
        h = st["sum"] * (2.0 / st["rows"])
        for lin in st["group"]:
            quantize(lin, h)
            todo.discard(id(lin))


def apply(model, recipe: GPTQ, calibration=None, train=None) -> Quantized:
    windows, cal = lm_windows(model.tokenizer, calibration, recipe.num_samples, recipe.seq_len)
    src = model.module
    mem = check_memory(src, windows, states=recipe.states)
    qm = copy.deepcopy(src).eval()
    targets, kept = select_linears(qm, recipe)
    _, blocks = decoder_blocks(qm)
    in_blocks = {n for n, m in qm.named_modules() if any(m is x for b in blocks for x in b.modules())}
    outside = [n for n in targets if n not in in_blocks]
    t0 = time.perf_counter()
    hidden, calls = block_calls(qm, blocks, windows)
    # on a GPU: the hidden states and one block at a time live there; the model stays on the CPU
    dev = torch.device(compute_device(recipe.device, "GPTQ"))
    if dev.type == "cuda":
        mem["chunk"] = min(mem["chunk"], check_gpu_memory(src, windows, recipe.states))
    hidden = _to(hidden.to(STATE_DTYPES[recipe.states]), dev)
    new_layers, errors = [], {}
    with progress(total=len(blocks), desc=f"GPTQ {recipe.name}", enabled=getattr(model, "verbose", True)) as bar:
        for bi, block in enumerate(blocks):
            names = {id(m): n for n, m in qm.named_modules() if n in targets and any(m is x for x in block.modules())}
            hidden, made = quantize_block(block, names, hidden, calls[bi], recipe, dev, errors, mem["chunk"])
            new_layers += made
            bar.update(1, block=bi)
    for name, new in new_layers:
        set_module(qm, name, new)
    layers = [m for _, m in new_layers]
    for name in outside:                       # e.g. an untied output head: round to nearest
        lin = qm.get_submodule(name)
        new = WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric)
        set_module(qm, name, new)
        layers.append(new)
    missing = sorted(set(targets) - {n for n, _ in new_layers} - set(outside))
    quantize_head(qm, recipe, targets, kept, layers)
    require(not missing, f"GPTQ: layer(s) {missing[:5]} were never called on the calibration data; "
                         "exclude them in the recipe")
    q = finish(model, qm, recipe, targets, kept, layers, calibration=cal)
    q.notes.append(f"GPTQ pass: {time.perf_counter() - t0:.1f} s over {len(blocks)} blocks; estimated peak "
                   f"{mem['total'] / 2**30:.2f} GB of {mem['available'] / 2**30:.1f} GB available"
                   + (f"; the blocks ran {mem['chunk']} of {windows.shape[0]} calibration windows at a time to fit"
                      if mem["chunk"] < windows.shape[0] else ""))
    if outside:
        q.notes.append(f"{len(outside)} layer(s) outside the decoder blocks ({', '.join(outside[:3])}) were rounded "
                       "to nearest: GPTQ captures inputs only inside the blocks")
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    q.notes.append("largest relative output errors on calibration inputs: "
                   + ", ".join(f"{n} {e:.3f}" for n, e in worst))
    q.extra["layer_errors"] = errors
    from ..monitor import profile               # what the drift monitor compares production prompts against
    q.activation_profile = profile(model, [], windows=windows)
    return q
