"""quantgate's GPTQ against GPTQModel (the reference) and round-to-nearest, on
SmolLM2-135M-Instruct, the same calibration windows, bits and group size.

    bash bench/setup_reference.sh          # once: GPTQModel 7.6 in .venv-reference
    .venv/bin/python bench/gptq_vs_reference.py [--bits 4,3] [--groups 128,64] [--samples 128] [--seq-len 512]
    .venv/bin/python bench/gptq_vs_reference.py --decode-only
    .venv/bin/python bench/gptq_vs_reference.py --rtn-only    # round-to-nearest with and without scale search

Prints, per (bits, group): perplexity on held-out BBC text (512-token windows),
the share of RTN's perplexity gap to fp32 each method closes (RTN with scale
search, `woq-int<b>-g<N>-search`, among them), quantization wall
time and peak memory (each quantizer runs in its own process; peak RSS of that
process). GPTQModel's packed checkpoint is dequantized here (its own CPU kernel
refuses 576-wide layers at group 128) and evaluated with the same code as ours.
Then batch-1 and batch-8 greedy decode speed, side by side in one process:
fp32 in transformers' eager loop (the reference for every ratio) against fp32,
int4 (with the tied head float, and with an int8 copy of it) and torch.ao
dynamic int8 in quantgate's decoder and in transformers' loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# quantgate's process settings (quantgate/_env.py: huge pages for torch's CPU allocator) before torch
# is imported; the quantizers' child processes, GPTQModel's too, inherit them.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import quantgate  # noqa: E402,F401

import numpy as np  # noqa: E402
import torch  # noqa: E402

from quantgate.data import bbc_splits  # noqa: E402
from quantgate.models import default_lm_dir, load_causal_lm  # noqa: E402
from quantgate.calibration import lm_windows  # noqa: E402
from quantgate.tasks.causal_lm import eval_windows  # noqa: E402


def perplexity(module, windows) -> float:
    nll = []
    with torch.inference_mode():
        for i in range(windows.shape[0]):
            ids = windows[i:i + 1]
            logits = module(input_ids=ids).logits[0, :-1].float()
            nll.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())
    return math.exp(float(np.mean(nll)))


def _quantgate_job(a) -> None:
    """Child process: quantgate GPTQ, then perplexity; JSON on the last line."""
    from quantgate.quantize import quantize
    from quantgate.recipes import GPTQ
    lm = load_causal_lm()
    cal = bbc_splits()["train"]
    r = GPTQ(bits=a.bits_one, group_size=a.group_one, act_order=not a.no_act_order, damp=a.damp, num_samples=a.samples,
             seq_len=a.seq_len, scale_search=not a.no_scale_search)
    q = quantize(lm, r, cal)
    ppl = perplexity(q.module, torch.load(a.eval_file))
    print(json.dumps({"seconds": q.seconds, "ppl": ppl}))


def run_measured(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[int, str, float]:
    """Run a command; return its exit code, output and peak RSS in MB of it and
    its children, sampled every 50 ms (ru_maxrss would report this parent's
    peak: Linux carries it across fork and exec)."""
    import psutil
    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
        proc, peak = psutil.Process(p.pid), 0
        while p.poll() is None:
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
        out.seek(0)
        return p.returncode, out.read(), peak / 2**20


def _last_json(out: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no result in output:\n{out[-3000:]}")


def dequantize_gptq_checkpoint(folder: Path, base) -> dict[str, torch.Tensor]:
    """fp32 weights from GPTQModel's checkpoint, by quantgate's GPTQ-layout reader
    (quantgate.export.gptq.read_weights), checked against the original weights."""
    from quantgate.export.gptq import read_weights
    out = read_weights(folder)
    for key, w in out.items():
        ref = base.get_submodule(key.removesuffix(".weight")).weight.detach()
        rel = ((w - ref).norm() / ref.norm()).item()
        # GPTQ moves weights further from the original than rounding does (0.57 seen at 3 bits, group
        # 64); a wrong unpacking gives noise, far beyond the weight's own norm
        assert rel < 1.0, f"{key}: dequantized GPTQModel weight is {rel:.2f} off the original: wrong unpacking?"
    return out


def rtn_ppl(lm, bits, group, windows, search=False) -> float:
    from quantgate.quantize import quantize
    from quantgate.recipes import WeightOnly
    return perplexity(quantize(lm, WeightOnly(bits=bits, group_size=group, scale_search=search)).module, windows)


def decode_bench(lm, steps: int = 32) -> list[dict]:
    """fp32 in transformers' eager loop (what a user runs today: the reference
    for the ratios) against quantgate's decoder on fp32, int4 (RTN g128; GPTQ
    stores the same format; the tied head float, or an int8 copy) and torch.ao
    dynamic int8, interleaved; in transformers' loop too, to separate the
    kernels' gain from the loop's."""
    from quantgate.quantize import quantize
    from quantgate.recipes import DynamicInt8, WeightOnly
    from quantgate.tasks.causal_lm import decode_speed
    int4 = quantize(lm, WeightOnly(bits=4, group_size=128)).module
    head8 = quantize(lm, WeightOnly(bits=4, group_size=128, head_bits=8)).module
    dyn = quantize(lm, DynamicInt8(backend="torch.ao")).module
    models = {"fp32, transformers": lm.module, "fp32, quantgate decoder": lm.module,
              "int4-g128, transformers": int4, "int4-g128, quantgate decoder": int4,
              "int4-g128-head8, quantgate decoder": head8,
              "dynamic int8, transformers": dyn, "dynamic int8, quantgate decoder": dyn}
    use = {k: "transformers" if k.endswith("transformers") else "quantgate" for k in models}
    res = decode_speed(models, lm.tokenizer, "The BBC reported today that the government", (1, 8), steps, rounds=3,
                       use=use)
    ref = res["fp32, transformers"]["batch_sizes"]
    rows = []
    for name, r in res.items():
        for bs, s in r["batch_sizes"].items():
            rows.append({"model": name, "batch": int(bs), "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                         "tokens_per_s": s["tokens_per_s"], "ttft_ms": s["ttft_ms"],
                         "x_fp32": s["tokens_per_s"] / ref[bs]["tokens_per_s"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bits", default="4,3")
    ap.add_argument("--groups", default="128,64")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=40, help="held-out 512-token windows for perplexity")
    ap.add_argument("--no-act-order", action="store_true",
                    help="both in plain column order (default: both group-aware act-order, GPTQModel's default)")
    ap.add_argument("--no-scale-search", action="store_true",
                    help="quantgate with min-max group scales, as GPTQModel by default (quantgate's default searches)")
    ap.add_argument("--damp", type=float, default=0.05, help="Hessian dampening for both (GPTQModel's default 0.05)")
    ap.add_argument("--reference-venv", default=str(ROOT / ".venv-reference"))
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="only the decode-speed comparison")
    ap.add_argument("--rtn-only", action="store_true", help="only round-to-nearest, with and without scale search")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("--bits-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--group-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--eval-file", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job == "quantgate":
        _quantgate_job(a)
        return 0

    torch.manual_seed(0)
    lm = load_causal_lm()
    if a.decode_only:
        _print_decode(decode_bench(lm))
        return 0
    sp = bbc_splits()
    tmp = Path(tempfile.mkdtemp(prefix="gptq-bench-"))
    cal = lm_windows(lm.tokenizer, sp["train"].texts, a.samples, a.seq_len)[0]
    (tmp / "calib.json").write_text(json.dumps(cal.tolist()))
    ev = eval_windows(lm.tokenizer, sp["test"].texts, 512, a.windows)
    torch.save(ev, tmp / "eval.pt")
    fp32 = perplexity(lm.module, ev)
    print(f"SmolLM2-135M-Instruct, {a.samples} x {a.seq_len} calibration tokens (BBC train), perplexity on "
          f"{ev.shape[0]} held-out BBC windows of 512 tokens; fp32 {fp32:.2f}; threads {torch.get_num_threads()}",
          flush=True)
    py_ref = Path(a.reference_venv) / "bin" / "python"
    results = []
    for bits in map(int, a.bits.split(",")):
        for group in map(int, a.groups.split(",")):
            row = {"bits": bits, "group": group, "fp32": fp32, "rtn": rtn_ppl(lm, bits, group, ev),
                   "rtn_search": {"ppl": rtn_ppl(lm, bits, group, ev, search=True)}}
            if a.rtn_only:
                results.append(row)
                _print_row(row)
                continue
            cmd = [sys.executable, __file__, "--job", "quantgate", "--bits-one", str(bits), "--group-one", str(group),
                   "--samples", str(a.samples), "--seq-len", str(a.seq_len), "--eval-file", str(tmp / "eval.pt")]
            if a.no_act_order:
                cmd.append("--no-act-order")
            if a.no_scale_search:
                cmd.append("--no-scale-search")
            cmd += ["--damp", str(a.damp)]
            env = os.environ | {"QUANTGATE_PROGRESS": "0"}
            t = time.perf_counter()
            rc, out_text, peak = run_measured(cmd, env)
            row["quantgate"] = _last_json(out_text) | {"process_s": time.perf_counter() - t, "peak_rss_mb": peak}
            if not a.skip_reference:
                out = tmp / f"ref-{bits}-{group}"
                t = time.perf_counter()
                rc, out_text, peak = run_measured(
                    [str(py_ref), str(ROOT / "bench" / "_gptqmodel_job.py"), str(default_lm_dir()),
                     str(tmp / "calib.json"), str(bits), str(group), "0" if a.no_act_order else "1", str(a.damp), str(out)],
                    env, cwd=tmp)     # GPTQModel writes a logs/ folder where it runs
                if rc:
                    row["gptqmodel"] = {"error": out_text[-2000:]}
                else:
                    ref = _last_json(out_text) | {"peak_rss_mb": peak}
                    w = dequantize_gptq_checkpoint(out, lm.module)
                    import copy
                    m = copy.deepcopy(lm.module)
                    missing = [k for k in w if k not in dict(m.named_parameters())]
                    assert not missing, missing[:3]
                    m.load_state_dict(w, strict=False)
                    ref["ppl"] = perplexity(m, ev)
                    ref["layers"] = len(w)
                    row["gptqmodel"] = ref | {"process_s": time.perf_counter() - t}
            results.append(row)
            _print_row(row)
    decode = [] if a.skip_decode or a.rtn_only else decode_bench(lm)
    _print_decode(decode)
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "decode": decode}, indent=2))
    return 0


def _print_decode(decode: list[dict]) -> None:
    for d in decode:
        print(f"decode {d['model']:32s} batch {d['batch']}: {d['tokens_per_s']:7.1f} tokens/s "
              f"({d['x_fp32']:.2f}x fp32 in transformers), "
              f"p50 {d['p50_ms']:.1f} ms/token, p99 {d['p99_ms']:.1f}, TTFT {d['ttft_ms']:.0f} ms")


def _print_row(row: dict) -> None:
    gap = row["rtn"] - row["fp32"]
    share = lambda p: (row["rtn"] - p) / gap if gap > 0 else float("nan")
    print(f"\nint{row['bits']} group {row['group']}: RTN {row['rtn']:.2f}; RTN with scale search "
          f"{row['rtn_search']['ppl']:.2f} (closes {100 * share(row['rtn_search']['ppl']):.0f}% of RTN's gap)")
    for who in ("quantgate", "gptqmodel"):
        r = row.get(who)
        if not r:
            continue
        if "error" in r:
            print(f"  {who:10s} failed: {r['error'][-400:]}")
            continue
        print(f"  {who:10s} ppl {r['ppl']:.2f} (closes {100 * share(r['ppl']):.0f}% of RTN's gap), "
              f"quantize {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    if row.get("gptqmodel") and "ppl" in row["gptqmodel"]:
        print(f"  quantgate / GPTQModel: perplexity {row['quantgate']['ppl'] / row['gptqmodel']['ppl']:.3f}x, "
              f"time {row['quantgate']['seconds'] / row['gptqmodel']['seconds']:.2f}x, "
              f"peak memory {row['quantgate']['peak_rss_mb'] / row['gptqmodel']['peak_rss_mb']:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
