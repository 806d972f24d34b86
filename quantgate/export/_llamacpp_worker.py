"""One GGUF model in llama.cpp (llama-cpp-python), answering requests on stdin.

Run by quantgate.export.llamacpp with the Python interpreter that has
llama-cpp-python (its own virtual environment: this file imports only numpy,
llama_cpp and the standard library). One JSON request per line; each answer is
one JSON line, followed for "logits" by the float32 array's raw bytes.

  {"op": "logits", "ids": [...], "start": s, "count": n}  -> logits at positions s .. s+n-1
  {"op": "generate", "ids": [...], "max_new": n, "stop": [...]} -> greedy new tokens (a stop token ends it, kept)
  {"op": "decode", "ids": [...], "steps": n}   -> time to first token and per-token decode latency, ms
  {"op": "memory"}                             -> this process's peak and current RSS, MB
"""

import json
import sys
import time

import numpy as np


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _argmax_last(llm) -> int:
    return int(np.argmax(llm.scores[llm.n_tokens - 1]))


def main():
    cfg = json.loads(sys.argv[1])
    out = sys.stdout.buffer
    before = _status_mb("VmRSS")
    import llama_cpp
    llm = llama_cpp.Llama(model_path=cfg["path"], n_ctx=cfg["n_ctx"], n_batch=cfg["n_ctx"], n_threads=cfg["threads"],
                          n_threads_batch=cfg["threads"], logits_all=True, verbose=False)

    def send(obj, array=None):
        out.write((json.dumps(obj) + "\n").encode())
        if array is not None:
            out.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        out.flush()

    send({"version": llama_cpp.__version__, "n_vocab": llm.n_vocab(), "rss_before_mb": before,
          "system": llama_cpp.llama_print_system_info().decode(errors="replace").strip()})
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        try:
            if op == "logits":
                llm.reset()
                llm.eval(req["ids"])
                s, n = req["start"], req["count"]
                send({"shape": [n, llm.n_vocab()]}, llm.scores[s:s + n])
            elif op == "generate":
                llm.reset()
                llm.eval(req["ids"])
                new, stop = [], set(req["stop"])
                for _ in range(req["max_new"]):
                    tok = _argmax_last(llm)
                    new.append(tok)
                    if tok in stop or len(new) == req["max_new"]:
                        break
                    llm.eval([tok])
                send({"tokens": new})
            elif op == "decode":
                llm.reset()
                t0 = time.perf_counter()
                llm.eval(req["ids"])
                tok = _argmax_last(llm)
                ttft, lat = (time.perf_counter() - t0) * 1e3, []
                for _ in range(req["steps"]):
                    t = time.perf_counter()
                    llm.eval([tok])
                    tok = _argmax_last(llm)
                    lat.append((time.perf_counter() - t) * 1e3)
                send({"ttft_ms": ttft, "ms": lat})
            elif op == "memory":
                send({"peak_mb": _status_mb("VmHWM"), "rss_mb": _status_mb("VmRSS")})
            else:
                send({"error": f"unknown op {op!r}"})
        except Exception as e:          # the caller raises it with the request that caused it
            send({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
