"""A causal LM run by llama.cpp, for a comparison that scores and times every
model where the user will serve it (`quantgate lm compare --runtime llama.cpp`).

Each model (the fp32 baseline too) is written as GGUF (gguf.py: F32 for float
tensors, Q4_0/Q8_0/Q4_1 from the stored codes) and loaded by llama-cpp-python
in a worker process of the interpreter that has it (_llamacpp_worker.py): its
own virtual environment, since it is built from source (bench/setup_deploy.sh).
`LlamaCpp` puts that process behind what the LM tasks call on a transformers
model: a forward pass for logits, `generate` for greedy answers, and a timed
decode loop, with the logits llama.cpp itself computes. One sequence at a
time: llama-cpp-python's `Llama` serves one, so decode speed is at batch 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import QuantgateError, require
from . import gguf

RUNTIME = "llama.cpp"
PYTHON_ENV = "QUANTGATE_LLAMA_CPP_PYTHON"
WORKER = Path(__file__).with_name("_llamacpp_worker.py")
SETUP = "bash bench/setup_deploy.sh (builds llama-cpp-python in .venv-deploy, ~15 min once)"


def python() -> str:
    """The interpreter that has llama-cpp-python: $QUANTGATE_LLAMA_CPP_PYTHON, this one, or the
    checkout's .venv-deploy; a clear error naming how to install it otherwise."""
    env = os.environ.get(PYTHON_ENV)
    candidates = [env] if env else [sys.executable, str(Path(__file__).resolve().parents[2] / ".venv-deploy/bin/python")]
    for p in candidates:
        if p and Path(p).is_file() and subprocess.run([p, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
            return p
    where = f"{PYTHON_ENV}={env} has no llama_cpp" if env else "llama-cpp-python is not installed"
    raise QuantgateError(f"--runtime llama.cpp: {where}; run `{SETUP}`, or set {PYTHON_ENV} to a Python that has it")


class _Output:
    def __init__(self, logits):
        self.logits = logits


class LlamaCpp(torch.nn.Module):
    """A GGUF file in a llama.cpp worker process, behind a transformers-like interface."""

    def __init__(self, path: Path, n_ctx: int, eos: set[int], threads: int | None = None, interpreter: str | None = None):
        super().__init__()
        self.path, self.n_ctx, self.eos = Path(path), n_ctx, set(eos)
        cfg = {"path": str(path), "n_ctx": n_ctx, "threads": threads or torch.get_num_threads()}
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([interpreter or python(), str(WORKER), json.dumps(cfg)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log)
        from ..evaluate.perf import WORKERS
        WORKERS.add(self._proc.pid)             # its CPU time is the comparison's own, not other load
        hello = self._read()
        self.version, self.n_vocab, self._rss_before = hello["version"], hello["n_vocab"], hello["rss_before_mb"]
        self.runtime_name = f"{RUNTIME} (llama-cpp-python {self.version})"

    # -- the worker's protocol ---------------------------------------------------------
    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace")[-2000:]
            raise QuantgateError(f"llama.cpp stopped while running {self.path}: {tail.strip() or 'no message'}")
        msg = json.loads(line)
        if "error" in msg:
            raise QuantgateError(f"llama.cpp, {self.path.name}: {msg['error']}")
        return msg

    def _ask(self, **req) -> dict:
        self._proc.stdin.write((json.dumps(req) + "\n").encode())
        self._proc.stdin.flush()
        return self._read()

    def _logits(self, ids: list[int], start: int, count: int) -> torch.Tensor:
        require(len(ids) <= self.n_ctx, f"llama.cpp: a sequence of {len(ids)} tokens is longer than its context "
                                        f"({self.n_ctx})")
        shape = self._ask(op="logits", ids=ids, start=start, count=count)["shape"]
        buf = self._proc.stdout.read(4 * shape[0] * shape[1])
        return torch.from_numpy(np.frombuffer(buf, dtype=np.float32).reshape(shape).copy())

    # -- what the LM tasks call ------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> _Output:
        """Logits [batch, length, vocab] at every attended position (zero at padding), one row at a time."""
        out = torch.zeros(*input_ids.shape, self.n_vocab)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        for j in range(input_ids.shape[0]):
            pos = mask[j].nonzero().flatten()
            ids = input_ids[j, pos].tolist()
            out[j, pos] = self._logits(ids, 0, len(ids))
        return _Output(out)

    def continuation_logprobs(self, ids: torch.Tensor, am: torch.Tensor, rows) -> list[torch.Tensor]:
        """Log-probabilities at the continuation positions only: (row, first position, count) per sequence."""
        out = []
        for j, s, n in rows:
            seq = ids[j, am[j].bool()].tolist()
            out.append(torch.log_softmax(self._logits(seq, s, n), dim=-1))
        return out

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 pad_token_id: int | None = None, **_) -> torch.Tensor:
        """Greedy decoding as transformers' generate returns it: the inputs, then the new tokens, padded."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pad = 0 if pad_token_id is None else pad_token_id
        new = torch.full((input_ids.shape[0], max_new_tokens), pad, dtype=input_ids.dtype)
        for j in range(input_ids.shape[0]):
            ids = input_ids[j, mask[j].bool()].tolist()
            require(len(ids) + max_new_tokens <= self.n_ctx, f"llama.cpp: {len(ids)} prompt tokens and "
                                                             f"{max_new_tokens} new ones exceed its context ({self.n_ctx})")
            toks = self._ask(op="generate", ids=ids, max_new=max_new_tokens, stop=sorted(self.eos))["tokens"]
            new[j, :len(toks)] = torch.tensor(toks, dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)

    def timed_decode(self, ids: torch.Tensor, steps: int) -> tuple[float, list[float]]:
        """Time to first token and per-token latencies (ms), timed inside llama.cpp's process."""
        require(ids.shape[0] == 1, "llama.cpp here decodes one sequence at a time: time it at batch size 1")
        r = self._ask(op="decode", ids=ids[0].tolist(), steps=steps)
        return r["ttft_ms"], r["ms"]

    def process_memory(self) -> dict:
        """Peak RSS of the llama.cpp process less what it held before loading the model, MB."""
        r = self._ask(op="memory")
        return {"memory_mb": r["peak_mb"] - self._rss_before, "file_mb": self.path.stat().st_size / 2**20}

    def close(self) -> None:
        from ..evaluate.perf import WORKERS
        WORKERS.discard(self._proc.pid)
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def serve(module, lm, folder: Path, what: str, n_ctx: int, interpreter: str | None = None) -> LlamaCpp:
    """`module` (the fp32 model or a candidate) written as GGUF into `folder` and run by llama.cpp."""
    from ..decoder import eos_ids
    from . import low_bit_layers
    layers, nf4 = low_bit_layers(module)
    try:
        gguf.check_model(module, layers, nf4)
    except QuantgateError as e:
        raise QuantgateError(f"{what} cannot run in llama.cpp: {e}") from None
    folder.mkdir(parents=True, exist_ok=True)
    gguf.write_model(module, lm.tokenizer, layers, folder)
    return LlamaCpp(folder / gguf.FILE, n_ctx, set(eos_ids(module)), interpreter=interpreter)
