"""Quantize a causal LM that stays on disk, one decoder block at a time.

    quantize_stored("path/to/llama", GPTQ(bits=4), calibration_texts, "artifact/")

The weights are read from their safetensors shards, in the dtype they are
stored in, only when their block's turn comes. Each block is made fp32,
quantized (round to nearest, NF4, or GPTQ on the calibration hidden states,
which then pass through the quantized block: `methods.gptq.quantize_block`,
the same code the in-memory path runs), written to a shard of its own in the
artifact's temporary folder, and freed. The artifact becomes visible only when
every shard and the manifest are written (an interrupted run leaves nothing).

What is held at the peak, then: one block in fp32 (and its stored copy while
it is read), the block's work, and for GPTQ
the calibration hidden states in and out of a block (windows x length x hidden
x 4 bytes each, 2 with -bf16states, twice more for the float pass that records
the drift profile);
or, at the end, the embedding and head in fp32 while the head is rounded
(they are read only then; GPTQ reads the embedding for the first hidden states
and frees it before the blocks).
`estimate` states it before any work, and `quantize_stored` refuses with the
numbers when it will not fit. Never the model: the in-memory path holds the
model in fp32 and a copy being quantized.

The result is the same artifact the in-memory path writes, tensor for tensor
(tests/test_streaming.py: the same content hash), in shards
(`weights_files` in its manifest); `artifact.load` reads either.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import torch

from .errors import QuantgateError, require

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
INDEX = "model.safetensors.index.json"
_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64", torch.int8: "I8",
          torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64", torch.bool: "BOOL"}


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> int:
    """A safetensors file written tensor by tensor from the tensors' own memory (safetensors'
    save_file first copies every tensor into one buffer: the embedding twice at the peak).
    Returns the tensors' bytes."""
    table, offset = {}, 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        table[k] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(table, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for t in tensors.values():
            if t.numel():
                f.write(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))
    return offset


def _header(path: Path) -> dict:
    """A safetensors file's tensor table, checked against the file's size (a truncated shard is refused)."""
    return read_table(path)[0]


def read_table(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table and where its data starts (offsets count from there)."""
    size = path.stat().st_size
    fix = "re-download or re-save the model"
    require(size >= 8, f"{path} is truncated ({size} bytes): not a safetensors file; {fix}")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        require(8 + n <= size, f"{path} is truncated: its header is {n:,} bytes and the file {size:,}; {fix}")
        try:
            table = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise QuantgateError(f"{path} is not a safetensors file (its header is not JSON); {fix}") from None
    require(isinstance(table, dict), f"{path} is not a safetensors file (its header is not a table); {fix}")
    table.pop("__metadata__", None)
    end = max((v["data_offsets"][1] for v in table.values()), default=0)
    require(8 + n + end <= size, f"{path} is truncated: its tensors need {8 + n + end:,} bytes and the file has "
                                 f"{size:,}; {fix}")
    return table, 8 + n


class Stored:
    """A Hugging Face causal-LM directory read shard by shard: every check of its files
    (index, shards, sizes, dtypes) happens here, before any work."""

    def __init__(self, path: str | Path):
        p = Path(path)
        require(p.is_dir(), f"model directory not found: {p}")
        require((p / "config.json").is_file(), f"{p} has no config.json: give a Hugging Face causal-LM directory")
        index = p / INDEX
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise QuantgateError(f"{index} is damaged (no weight_map); re-download the model") from None
            shards = sorted(set(wm.values()))
            gone = [s for s in shards if not (p / s).is_file()]
            require(not gone, f"{index} points at {len(gone)} shard(s) that are not there ({', '.join(gone[:3])}); "
                              "re-download the model")
        else:
            wm, shards = None, sorted(f.name for f in p.glob("*.safetensors"))
            require(shards, f"{p} has no safetensors weights: quantizing from disk reads safetensors shards "
                            "(save the model with save_pretrained(..., safe_serialization=True))")
        self.path, self.files = p, [p / s for s in shards]
        self.tensors: dict[str, tuple[Path, str, list[int]]] = {}
        for f in self.files:
            for name, v in _header(f).items():
                self.tensors[name] = (f, v["dtype"], v["shape"])
        if wm is not None:
            wrong = [k for k, s in wm.items() if k not in self.tensors or self.tensors[k][0].name != s]
            if wrong:
                raise QuantgateError(f"{index} puts {wrong[0]} in {wm[wrong[0]]}, which does not hold it; "
                                     "re-download the model")
        odd = [(k, d) for k, (_, d, _) in self.tensors.items() if d not in DTYPES]
        if odd:
            raise QuantgateError(f"{odd[0][0]} is stored as {odd[0][1]}: quantizing from disk reads F32, BF16 and "
                                 "F16 weights (an already quantized checkpoint cannot be quantized again)")
        from .models import hash_files
        weights = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin")]
        self.sha = hash_files(weights)            # as models.load_causal_lm hashes the same directory

    def nbytes(self) -> int:
        return sum(int(torch.Size(s).numel()) * DTYPES[d].itemsize for _, d, s in self.tensors.values())

    def dtype(self) -> torch.dtype:
        """The dtype most of the stored bytes are in (bf16 for most models shipped today)."""
        by = {}
        for _, d, sh in self.tensors.values():
            by[d] = by.get(d, 0) + int(torch.Size(sh).numel()) * DTYPES[d].itemsize
        return DTYPES[max(by, key=by.get)]

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The named tensors in their stored dtype, each shard opened (memory-mapped) once and closed."""
        from safetensors import safe_open
        by: dict[Path, list[str]] = {}
        for n in names:
            by.setdefault(self.tensors[n][0], []).append(n)
        out = {}
        for f, ns in by.items():
            with safe_open(str(f), framework="pt") as h:
                for n in ns:
                    out[n] = h.get_tensor(n)
        return out


def skeleton(store: Stored):
    """The model's modules with every parameter on the meta device (nothing allocated); buffers
    that are computed, not stored (rotary tables), are real."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    cfg = AutoConfig.from_pretrained(store.path, local_files_only=True)
    with init_empty_weights():
        hf = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return hf.eval()


def materialize(module: torch.nn.Module, prefix: str, store: Stored, skip: set[str] = frozenset()) -> None:
    """Fill `module`'s meta parameters (full names `prefix` + name) from the store, in fp32."""
    from accelerate.utils import set_module_tensor_to_device
    want = [n for n, p in module.named_parameters() if p.device.type == "meta" and prefix + n not in skip]
    absent = [prefix + n for n in want if prefix + n not in store.tensors]
    if absent:
        raise QuantgateError(f"{store.path}'s weights have no {absent[0]} (and {len(absent) - 1} more): "
                             "not the checkpoint of this config.json")
    for n, t in store.load([prefix + n for n in want]).items():
        set_module_tensor_to_device(module, n[len(prefix):], "cpu", value=t.float())


def estimate(store: Stored, recipe, windows: int = 0, seq_len: int = 0, chunk: int | None = None) -> dict:
    """Peak memory of quantizing from disk, by part (bytes), GPTQ's blocks running `chunk`
    of the calibration windows at a time (None: all)."""
    from .methods.gptq import STATE_BYTES, block_work_bytes
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(store.path, local_files_only=True)
    hidden, inter = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    blocks = cfg.num_hidden_layers
    outside = sum(int(torch.Size(s).numel()) for n, (_, _, s) in store.tensors.items() if ".layers." not in n)
    block = (sum(int(torch.Size(s).numel()) for n, (_, _, s) in store.tensors.items() if ".layers." in n)
             // max(1, blocks))
    tokens = windows * seq_len
    # Two phases, each its own peak: the blocks one at a time, then what is outside them.
    parts = {"one block in fp32, its stored copy and its quantized copy": block * (4 + 2 + 1)}
    states = getattr(recipe, "states", "fp32")
    if recipe.method == "gptq":
        parts[f"calibration hidden states (quantized and float passes, in and out; {states})"] = \
            4 * tokens * hidden * STATE_BYTES[states]
        parts[f"one block's work on {chunk or windows} windows at a time"] = block_work_bytes(cfg, chunk or windows,
                                                                                              seq_len, states)
        parts["Hessians and GPTQ's working copies"] = 3 * max(hidden, inter) ** 2 * 4 + 3 * inter * hidden * 4
    largest = max(int(torch.Size(s).numel()) for _, _, s in store.tensors.values())
    end = {"embedding, norm and head in fp32, and their quantized copies": outside * (4 + 1),
           "the largest tensor read back in fp32 for the content hash": largest * 4,
           "the float stream for the head's drift profile": tokens * hidden * (STATE_BYTES[states] + 4)}
    if sum(end.values()) > sum(parts.values()):
        parts = end
    return {"total": sum(parts.values()), "parts": parts, "chunk": chunk or windows}


def _check_fits(store: Stored, recipe, windows: int, seq_len: int, available: int | None = None) -> dict:
    """The estimate with the most calibration windows per block forward that fits, or refused."""
    import psutil
    from .methods.gptq import fitting_chunk
    avail = psutil.virtual_memory().available if available is None else available
    gb = lambda b: f"{b / 2**30:.2f} GB"                # noqa: E731
    chunk, _ = fitting_chunk(max(1, windows), lambda c: estimate(store, recipe, windows, seq_len, c)["total"], avail)
    est = estimate(store, recipe, windows, seq_len, chunk or 1)
    if not chunk:
        raise QuantgateError(f"quantizing from disk would need about {gb(est['total'])} at its peak but "
                             f"{gb(avail)} is available ("
                             + "; ".join(f"{k} {gb(v)}" for k, v in est["parts"].items())
                             + "); lower num_samples or seq_len"
                             + (", keep the calibration states in bf16 (-bf16states)"
                                if getattr(recipe, "states", None) == "fp32" else "")
                             + ", or use a machine with more memory")
    est["available"] = avail
    return est


def _float_pass(block, hidden: torch.Tensor, call, prof, names: dict, dev: torch.device) -> torch.Tensor:
    """The float block on the float hidden states, in the batches of windows the in-memory profile
    reads (activations.LM_BATCH), recording every Linear input into `prof` (the drift profile).
    The block runs on `dev` (a GPU: one batch there at a time) and is left there for quantize_block,
    which runs next and puts it back; the float stream stays in host memory."""
    from .activations import LM_BATCH
    from .methods.gptq import _block_out, _to, window_rows
    n = hidden.shape[0]
    hooks = [m.register_forward_pre_hook(lambda mod, a, k=names[id(m)]: prof.observe(
        k, a[0].detach().reshape(-1, a[0].shape[-1]).float())) for m in block.modules() if id(m) in names]
    outs = []
    block.to(dev)
    try:
        with torch.inference_mode():
            for i in range(0, n, LM_BATCH):
                outs.append(_block_out(block, _to(hidden[i:i + LM_BATCH], dev),
                                       _to(window_rows(call, i, i + LM_BATCH, n), dev)).cpu())
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(outs)


def _head_input(hf, blocks_name: str, fl: torch.Tensor, prof, head_name: str) -> None:
    """The output head's input for the drift profile: the float stream through the decoder's final norm."""
    from .activations import LM_BATCH
    dec = hf.get_submodule(blocks_name.rpartition(".")[0])
    norm = next((getattr(dec, k) for k in ("norm", "final_layernorm", "ln_f") if hasattr(dec, k)), None)
    if norm is None:
        return
    with torch.inference_mode():
        for i in range(0, fl.shape[0], LM_BATCH):
            x = norm(fl[i:i + LM_BATCH].float())
            prof.observe(head_name, x.reshape(-1, x.shape[-1]).float())


def quantize_stored(path: str | Path, recipe, calibration=None, out: str | Path | None = None,
                    verbose: bool = True, available: int | None = None, overwrite: bool = False) -> Path:
    """Quantize the causal LM in `path` block by block from its safetensors shards into the
    artifact folder `out` (weight formats: int, GPTQ, NF4). Returns `out`."""
    from transformers import AutoTokenizer

    from .artifact import check_out, write
    from .calibration import lm_windows
    from .methods.common import INT8_KEPT, Quantized, float_operators, footprint, module_tensors, select_linears
    from .methods.gptq import STATE_DTYPES, block_calls, decoder_blocks, quantize_block
    from .methods.nf4 import NF4Linear
    from .methods.weight_only import WeightOnlyLinear, kernel_summary, quantize_head, set_module
    from .models import CausalLM
    from .evaluate.perf import trim_heap
    from .monitor import Profile
    from .progress import progress
    from .report.files import atomic_dir

    require(recipe.method in ("weight-only", "gptq", "nf4"),
            f"quantizing from disk is for weight formats (int, gptq, nf4), not {recipe.name}")
    require(out is not None, "quantizing from disk writes an artifact: give an output folder")
    store = Stored(path)
    out = check_out(out, overwrite)
    gptq = recipe.method == "gptq"
    tok = AutoTokenizer.from_pretrained(store.path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    windows = cal = None
    if gptq:
        windows, cal = lm_windows(tok, calibration, recipe.num_samples, recipe.seq_len)
    est = _check_fits(store, recipe, *(windows.shape if gptq else (0, 0)), available)
    t0 = time.perf_counter()
    hf = skeleton(store)
    blocks_name, blocks = decoder_blocks(hf)
    in_blocks = {f"{blocks_name}.{i}." for i in range(len(blocks))}
    inside = lambda n: any(n.startswith(p) for p in in_blocks)
    tied = bool(getattr(hf.config, "tie_word_embeddings", False))
    if tied:
        hf.tie_weights()                           # on the skeleton too: select_linears knows the head by it
    head = hf.get_output_embeddings()
    head_name = next((n for n, m in hf.named_modules() if m is head), None)
    in_block_params = {n for n, _ in hf.named_parameters() if inside(n)}

    def materialize_rest():
        """Everything outside the blocks (embedding, final norm, head), read only when needed."""
        materialize(hf, "", store, skip=in_block_params | ({f"{head_name}.weight"} if tied and head_name else set()))
        if tied:
            hf.tie_weights()
    lm = CausalLM(hf, tok, str(store.path), store.sha)
    targets, kept = select_linears(hf, recipe)
    names_of = {id(m): n for n, m in hf.named_modules()}
    made, errors, files, nbytes, prof = [], {}, [], 0, Profile() if gptq else None

    def new_layer(lin):
        if recipe.method == "nf4":
            return NF4Linear(lin, recipe.block_size, recipe.double_quant, recipe.dq_block_size)
        return WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric,
                                search=getattr(recipe, "scale_search", False))

    with atomic_dir(out, replace=overwrite) as tmp:
        if gptq:
            from .methods.common import compute_device
            from .methods.gptq import _to, check_gpu_memory
            emb = hf.get_input_embeddings()
            materialize(emb, f"{names_of[id(emb)]}.", store)
            hidden, calls = block_calls(hf, blocks, windows)
            hidden = hidden.to(STATE_DTYPES[recipe.states])
            emb.to("meta")                         # read again at the end: not held through the blocks
            fl = hidden                            # the float stream, for the drift profile
            dev = torch.device(compute_device(recipe.device, "GPTQ"))
            if dev.type == "cuda":                 # the states and one block on the GPU: as many windows as fit
                est["chunk"] = min(est["chunk"], check_gpu_memory(hf, windows, recipe.states))
            hidden = _to(hidden, dev)
        with progress(total=len(blocks), desc=f"{recipe.name} from disk", enabled=verbose) as bar:
            for bi, block in enumerate(blocks):
                prefix = f"{blocks_name}.{bi}."
                materialize(block, prefix, store)
                mine = {id(m): names_of[id(m)] for m in block.modules() if names_of.get(id(m)) in targets}
                linears = {id(m): names_of[id(m)] for m in block.modules() if isinstance(m, torch.nn.Linear)}
                if gptq:
                    fl = _float_pass(block, fl, calls[bi], prof, linears, dev)       # before any weight changes
                    hidden, layer = quantize_block(block, mine, hidden, calls[bi], recipe, dev, errors, est["chunk"])
                else:
                    layer = [(n, new_layer(block.get_submodule(n[len(prefix):]))) for n in mine.values()]
                layer += [(n, WeightOnlyLinear(block.get_submodule(n[len(prefix):]), 8, None, True))
                          for n, why in kept.items() if n.startswith(prefix) and why.startswith(INT8_KEPT)]
                for n, new in layer:
                    old = hf.get_submodule(n)
                    set_module(hf, n, new)
                    old.to("meta")                 # `targets` still names it: its float weight goes now
                made += layer
                nbytes += save_shard({prefix + k: v for k, v in module_tensors(block).items()},
                           tmp / f"weights-{bi:05d}.safetensors")
                files.append(f"weights-{bi:05d}.safetensors")
                block.to("meta")                   # freed: the next block is read in its place
                trim_heap()                        # ... and the heap's free memory goes back to the system
                bar.update(1, block=bi)
        materialize_rest()
        if gptq and head_name:
            _head_input(hf, blocks_name, fl, prof, head_name)
        int8 = {n for n, why in kept.items() if why.startswith(INT8_KEPT)}
        for n in [n for n in targets if not inside(n)] + [n for n in int8 if not inside(n)]:
            lin = hf.get_submodule(n)              # an untied head: rounded to nearest, as in memory
            new = WeightOnlyLinear(lin, 8, None, True) if n in int8 else (
                new_layer(lin) if not gptq else WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric))
            set_module(hf, n, new)
            made.append((n, new))
        for n in int8:
            kept.pop(n)
        layers = [m for _, m in made]
        if getattr(recipe, "head_bits", None):
            quantize_head(hf, recipe, targets, kept, layers)
        nbytes += save_shard(module_tensors(hf), tmp / "weights-rest.safetensors")
        files.append("weights-rest.safetensors")
        q = Quantized(hf, recipe, list(targets) + sorted(int8), kept, kernel_summary(layers), calibration=cal,
                      float_ops=float_operators(hf, "weight-only quantization (activations stay float)"))
        q.seconds = round(time.perf_counter() - t0, 2)
        q.weight_bytes = nbytes
        original = skeleton(store)                 # the float model's shapes (on meta), for the footprint
        if tied:
            original.tie_weights()
        q.footprint = footprint(original, q.weight_bytes, q.quantized_layers, None, list(kept))
        q.notes.append(f"quantized from disk, one block at a time: {len(blocks)} blocks in {q.seconds:.1f} s; "
                       f"estimated peak {est['total'] / 2**30:.2f} GB of {est['available'] / 2**30:.1f} GB available"
                       + (f"; the blocks ran {est['chunk']} of {windows.shape[0]} calibration windows at a time to fit"
                          if gptq and est["chunk"] < windows.shape[0] else ""))
        if gptq:
            q.extra["layer_errors"] = errors
            q.activation_profile = prof.result(int(windows.shape[0]), f"windows of {windows.shape[1]} tokens")
        hf.to("meta")                              # all written: only the layers' formats are read from here on
        trim_heap()
        write(q, lm, tmp, shards=files)
    return out

