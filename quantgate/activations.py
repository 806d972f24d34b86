"""Is the calibration data good enough? Three checks on the float model's
activations at the input of every Linear layer (what static int8 quantizes):

- sufficiency: per-layer ranges from growing prefixes of the calibration data;
  converged when doubling the data no longer moves them.
- coverage: evaluation activations against the calibrated ranges: the share of
  values clipped per layer, and which slices clip most; plus slice values the
  evaluation data has and the calibration data lacks.
- outliers: per input channel, the channel's peak magnitude against the layer's
  typical channel peak, its max/median magnitude ratio and its kurtosis.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from .calibration import batches
from .data import Dataset
from .progress import progress

CONVERGED_CHANGE = 0.10      # ranges that move less than this on the last doubling have converged
MIN_SAMPLES = 32
CONVERGED_SHARE = 0.90       # ... in at least this share of layers (min-max ranges of heavy tails creep up slowly)
CLIP_RATE_WARN = 1e-5        # share of evaluation activation values outside the calibrated ranges
OUTLIER_RATIO_INFO = 10.0    # channel peak / median channel peak
OUTLIER_RATIO_WARN = 50.0
TOKEN_SAMPLE = 1024          # tokens kept per layer for medians


@contextmanager
def linear_input_hooks(module: torch.nn.Module, fn):
    """Call fn(layer_name, input_tensor) before every Linear layer runs."""
    handles = [m.register_forward_pre_hook(lambda mod, args, n=name: fn(n, args[0]))
               for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


LM_TOKENS = 512             # a language model's input here: each text's first tokens
LM_BATCH = 8                # ... this many sequences a forward pass


def encode(model, texts: list[str]) -> dict[str, torch.Tensor]:
    """Texts as a model of either kind takes them: a classifier's fixed-length encoding, or each
    text's first LM_TOKENS tokens (BOS-led where the tokenizer adds one), right-padded, for an LM."""
    from .models import CausalLM
    if not isinstance(model, CausalLM):
        return model.encode(texts)
    tok = model.tokenizer
    ids = [tok(t, truncation=True, max_length=LM_TOKENS)["input_ids"] for t in texts]
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = torch.full((len(ids), width), pad, dtype=torch.long)
    am = torch.zeros_like(out)
    for i, row in enumerate(ids):
        out[i, :len(row)] = torch.tensor(row)
        am[i, :len(row)] = 1
    return {"input_ids": out, "attention_mask": am}


def forward_batches(model, enc: dict, batch_size: int, before=None):
    """Run the model over an encoding batch by batch (an LM at most LM_BATCH sequences at once),
    calling before(attention_mask) ahead of each batch; yields each batch's size after it ran."""
    from .models import CausalLM
    lm = isinstance(model, CausalLM)
    for ids, am in batches(enc, min(batch_size, LM_BATCH) if lm else batch_size):
        if before is not None:
            before(am)
        if lm:
            model.module(input_ids=ids, attention_mask=am)
        else:
            model.module(ids, am)
        yield ids.shape[0]


def _run(model, data, fn, batch_size: int, desc: str, verbose: bool, enc: dict | None = None):
    """fn(layer, input, first example's index) for every Linear input over the data (or `enc`, encoded)."""
    enc = enc or model.encode(data.texts)
    state = {"offset": 0}

    def hook(name, x):
        fn(name, x, state["offset"])

    with torch.inference_mode(), linear_input_hooks(model.module, hook), \
            progress(total=enc["input_ids"].shape[0], desc=desc, enabled=verbose) as bar:
        for b in forward_batches(model, enc, batch_size):
            state["offset"] += b
            bar.update(b)


def calibration_stats(model, calib: Dataset | None, batch_size: int = 32, verbose: bool = False,
                      enc: dict | None = None, also=None) -> dict:
    """One pass over the calibration data (or `enc`: an LM's calibration windows): per layer,
    per-example min and max (for prefix ranges), per-channel peaks, and a random sample of
    tokens (for medians and kurtosis). `also(layer, input, first index)` sees every input too."""
    n = len(calib) if enc is None else enc["input_ids"].shape[0]
    st: dict[str, dict] = {}
    gen = torch.Generator().manual_seed(0)

    def fn(name, x, off):
        if also is not None:
            also(name, x, off)
        x = x.detach().float()
        b, c = x.shape[0], x.shape[-1]
        s = st.setdefault(name, {"ex_min": np.zeros(n), "ex_max": np.zeros(n), "ch_peak": torch.zeros(c),
                                 "tokens": []})
        flat = x.reshape(b, -1)
        s["ex_min"][off:off + b] = flat.amin(dim=1).numpy()
        s["ex_max"][off:off + b] = flat.amax(dim=1).numpy()
        t = x.reshape(-1, c)
        s["ch_peak"] = torch.maximum(s["ch_peak"], t.abs().amax(dim=0))
        kept = sum(len(v) for v in s["tokens"])
        if kept < TOKEN_SAMPLE:
            idx = torch.randperm(t.shape[0], generator=gen)[: TOKEN_SAMPLE - kept]
            s["tokens"].append(t[idx].clone())

    _run(model, calib, fn, batch_size, "calibration statistics", verbose, enc)
    return st


def sufficiency_sizes(n: int) -> list[int]:
    """The prefixes the sufficiency checks read: 1, 2, 4, ... and n itself."""
    return sorted({min(n, 2 ** k) for k in range(0, int(math.ceil(math.log2(max(n, 1)))) + 1)})


def sufficiency(st: dict, n: int) -> dict:
    """Range width per layer at prefixes 1, 2, 4, ... n of the calibration
    data (the curve), whether the last doubling still moved any layer's range
    by more than CONVERGED_CHANGE, and a recommended minimum sample count."""
    sizes = sufficiency_sizes(n)
    half = n // 2
    curve, change = {}, {}
    for name, s in st.items():
        # range width (always containing 0) after each prefix of the calibration examples
        width = np.maximum(np.maximum.accumulate(s["ex_max"]), 0) - np.minimum(np.minimum.accumulate(s["ex_min"]), 0)
        curve[name] = [float(width[k - 1] / width[-1]) if width[-1] > 0 else 1.0 for k in sizes]
        change[name] = float(1 - width[half - 1] / width[-1]) if half >= 1 and width[-1] > 0 else 1.0
    worst = sorted(change.items(), key=lambda kv: -kv[1])
    converged_layers = [k for k, v in change.items() if v <= CONVERGED_CHANGE]
    share = len(converged_layers) / max(1, len(change))
    # smallest prefix from which enough layers' ranges are within CONVERGED_CHANGE of the final ones
    within = [k for i, k in enumerate(sizes)
              if np.mean([c[i] >= 1 - CONVERGED_CHANGE for c in curve.values()]) >= CONVERGED_SHARE]
    converged = n >= MIN_SAMPLES and share >= CONVERGED_SHARE
    recommended = max(MIN_SAMPLES, within[0] if within and converged else 2 * n)
    return {"sizes": sizes, "curve": curve, "last_doubling_change": dict(worst[:10]), "converged": converged,
            "n": n, "recommended_min_samples": int(recommended),
            "converged_share": share}


def coverage(model, st: dict, data, batch_size: int = 32, verbose: bool = False, enc: dict | None = None,
             also=None) -> dict:
    """Share of evaluation activations outside each layer's calibrated (min-max)
    range, overall and per slice value (`data.slices`; `enc`: an LM's encoded prompts).
    `also(layer, input, first index)` sees every input too."""
    ranges = {k: (float(v["ex_min"].min()), float(v["ex_max"].max())) for k, v in st.items()}
    n = len(data)
    clipped = {k: np.zeros(n) for k in ranges}
    per_ex_values = {}

    def fn(name, x, off):
        if also is not None:
            also(name, x, off)
        lo, hi = ranges[name]
        b = x.shape[0]
        flat = x.detach().float().reshape(b, -1)
        clipped[name][off:off + b] = ((flat < lo) | (flat > hi)).sum(dim=1).numpy()
        per_ex_values[name] = flat.shape[1]

    _run(model, data, fn, batch_size, "coverage", verbose, enc)
    layers = {k: float(v.sum() / (per_ex_values[k] * n)) for k, v in clipped.items()}
    total = sum(clipped.values())
    per_value = sum(per_ex_values.values())
    slices = {}
    for col, values in data.slices.items():
        values = np.asarray(values)
        slices[col] = sorted(({"value": v, "clip_rate": float(total[values == v].sum() / (per_value * (values == v).sum()))}
                              for v in sorted(set(values.tolist()))), key=lambda r: -r["clip_rate"])
    worst = sorted(layers.items(), key=lambda kv: -kv[1])
    return {"clip_rate": float(total.sum() / (per_value * n)), "worst_layers": dict(worst[:10]), "slices": slices}


def outliers(st: dict, top: int = 10) -> list[dict]:
    """Layers ranked by their worst input channel's peak against the median channel peak."""
    rows = []
    for name, s in st.items():
        peak = s["ch_peak"]
        med_peak = float(peak.median())
        c = int(peak.argmax())
        col = torch.cat(s["tokens"])[:, c].double()
        centred = col - col.mean()
        var = float((centred ** 2).mean())
        kurt = float((centred ** 4).mean()) / var ** 2 if var > 0 else None
        med = float(col.abs().median())
        rows.append({"layer": name, "channel": c, "peak": float(peak[c]), "median_channel_peak": med_peak,
                     "channel_ratio": float(peak[c]) / med_peak if med_peak > 0 else None,
                     "max_over_median": float(peak[c]) / med if med > 0 else None, "kurtosis": kurt})
    return sorted(rows, key=lambda r: -(r["channel_ratio"] or 0))[:top]


def missing_slices(calib: Dataset, data: Dataset) -> dict[str, list[str]]:
    """Slice values present in the evaluation data and absent from calibration."""
    out = {}
    for col, values in data.slices.items():
        if col in calib.slices:
            gone = sorted(set(values) - set(calib.slices[col]))
            if gone:
                out[col] = gone
    return out


def check_calibration(model, calib: Dataset, data: Dataset, batch_size: int = 32, verbose: bool = False) -> dict:
    st = calibration_stats(model, calib, batch_size, verbose)
    return {"n": len(calib), "sufficiency": sufficiency(st, len(calib)),
            "coverage": coverage(model, st, data, batch_size, verbose),
            "missing_slices": missing_slices(calib, data), "outliers": outliers(st)}


# -- language models ------------------------------------------------------------

LM_MIN_WINDOWS = 32          # GPTQ calibration windows below which the result leans on too few tokens
TOKEN_JS_WARN = 0.50         # Jensen-Shannon divergence (bits) of token unigrams, calibration vs evaluation prompts
LM_CHECK_WINDOWS = 32        # the checks read at most this many of GPTQ's windows ...
LM_CHECK_PROMPTS = 128       # ... and this many evaluation prompts: each costs a forward pass
UNSEEN_WARN = 0.45           # share of evaluation tokens whose token never occurs in the calibration text


def token_distance(cal_ids: torch.Tensor, eval_ids: list[list[int]]) -> dict:
    """How unlike the evaluation prompts the calibration text is, by token: the Jensen-Shannon
    divergence of their unigram distributions (bits, 0 to 1) and the share of evaluation tokens
    never seen in calibration."""
    cal = np.bincount(cal_ids.reshape(-1).numpy())
    ev = np.bincount(np.concatenate([np.asarray(x, dtype=np.int64) for x in eval_ids]))
    v = max(len(cal), len(ev))
    p, q = np.pad(cal, (0, v - len(cal))) / cal.sum(), np.pad(ev, (0, v - len(ev))) / ev.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())
    return {"js_bits": (kl(p) + kl(q)) / 2, "unseen_share": float(q[p == 0].sum()),
            "calibration_tokens": int(cal.sum()), "evaluation_tokens": int(ev.sum())}


class _Prompts:
    """The evaluation prompts as `coverage` reads them: a length and slice columns."""

    def __init__(self, prompts, slices):
        self.prompts, self.slices = prompts, slices

    def __len__(self):
        return len(self.prompts)


GPTQ_CONVERGED = 0.05        # GPTQ's task-input error that improves less than this on the last doubling has converged


class GPTQProbe:
    """Does GPTQ's result converge as calibration windows double? A few layers (the first
    Linear of the first and last decoder blocks, the last Linear of the middle one) collect
    their input Hessians from growing prefixes of the calibration windows and from the
    evaluation prompts' real tokens, on the passes the checks make anyway; `result` runs
    GPTQ on each prefix's Hessian and measures each rounding's output error on the
    evaluation prompts' inputs (held out: GPTQ never sees them)."""

    def __init__(self, module: torch.nn.Module, sizes: list[int], eval_mask: torch.Tensor):
        from .methods.gptq import decoder_blocks
        _, blocks = decoder_blocks(module)
        names = {id(m): n for n, m in module.named_modules()}
        lin = lambda b: [m for m in b.modules() if isinstance(m, torch.nn.Linear)]
        picks = [lin(blocks[0])[0], lin(blocks[len(blocks) // 2])[-1], lin(blocks[-1])[0]]
        self.layers = {names[id(m)]: m for m in picks}
        self.sizes, self.mask = set(sizes), eval_mask.bool()
        self.sum = {n: None for n in self.layers}
        self.rows = dict.fromkeys(self.layers, 0)
        self.prefix: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.layers}
        self.eval: dict[str, list] = {n: [None, 0] for n in self.layers}

    def calibration(self, name: str, x: torch.Tensor, off: int) -> None:
        if name not in self.layers:
            return
        for j in range(x.shape[0]):            # window by window: a Hessian after every prefix size
            xi = x[j].reshape(-1, x.shape[-1]).float()
            self.sum[name] = xi.T @ xi if self.sum[name] is None else self.sum[name] + xi.T @ xi
            self.rows[name] += xi.shape[0]
            if off + j + 1 in self.sizes:
                self.prefix[name][off + j + 1] = self.sum[name] * (2.0 / self.rows[name])

    def evaluation(self, name: str, x: torch.Tensor, off: int) -> None:
        if name not in self.layers:
            return
        xe = x[self.mask[off:off + x.shape[0]]].float()       # real tokens only
        e = self.eval[name]
        e[0] = xe.T @ xe if e[0] is None else e[0] + xe.T @ xe
        e[1] += xe.shape[0]

    def result(self, recipe) -> dict:
        from .methods.gptq import gptq_weight, output_error
        from .methods.weight_only import WeightOnlyLinear
        errors = {}
        for name, lin in self.layers.items():
            h_eval = self.eval[name][0] * (2.0 / max(1, self.eval[name][1]))
            errors[name] = []
            for n in sorted(self.prefix[name]):
                q, qp = gptq_weight(lin.weight, self.prefix[name][n], recipe.bits, recipe.group_size, recipe.symmetric,
                                    recipe.act_order, recipe.damp, recipe.block_size, recipe.scale_search)
                dq = WeightOnlyLinear(lin, recipe.bits, recipe.group_size, recipe.symmetric, qp=qp,
                                      codes=q).dequantized_weight()
                errors[name].append(output_error(lin.weight, dq, h_eval))
        sizes = sorted(next(iter(self.prefix.values())))
        last = {k: 1 - v[-1] / v[-2] if len(v) > 1 and v[-2] > 0 else 1.0 for k, v in errors.items()}
        converged = len(sizes) > 1 and max(last.values()) < GPTQ_CONVERGED
        within = [s for i, s in enumerate(sizes) if all(v[i] <= (1 + GPTQ_CONVERGED) * v[-1] for v in errors.values())]
        return {"recipe": recipe.name, "sizes": sizes, "errors": errors, "last_doubling_gain": last,
                "converged": converged,
                "recommended_windows": int(within[0] if converged else max(LM_MIN_WINDOWS, 2 * sizes[-1])),
                "held_out_tokens": int(next(iter(self.eval.values()))[1])}


def check_lm_calibration(lm, calib, data, num_samples: int, seq_len: int, verbose: bool = False,
                         gptq=None) -> dict:
    """The calibration checks for a causal LM on the GPTQ windows it would be calibrated on:
    sufficiency of the activation ranges over the windows and of GPTQ's result (`gptq`, the
    recipe to check: default GPTQ()), coverage of the evaluation prompts (token distance,
    activation clipping per slice), outlier channels. Less text than one window is checked
    as the one short window it is."""
    from .calibration import bos_id, cut_windows, token_stream
    tok = lm.tokenizer
    texts = list(calib.texts if isinstance(calib, Dataset) else calib)
    requested, num_samples = num_samples, min(num_samples, LM_CHECK_WINDOWS)
    stream = token_stream(tok, texts, limit=num_samples * seq_len)
    bos = bos_id(tok)
    fit = len(stream) // max(1, seq_len - (bos is not None))
    windows = cut_windows(stream, seq_len, min(num_samples, fit), bos) if fit >= 1 else stream[None, :]
    enc = {"input_ids": windows, "attention_mask": torch.ones_like(windows)}
    n = int(windows.shape[0])
    prompts = list(getattr(data, "prompts", None) or getattr(data, "texts", None) or data)[:LM_CHECK_PROMPTS]
    slices = {k: v[:len(prompts)] for k, v in (getattr(data, "slices", None) or {}).items()}
    ev = encode(lm, prompts)
    probe = GPTQProbe(lm.module, sufficiency_sizes(n), ev["attention_mask"])
    from .monitor import Profile, remember
    # the drift profile of these windows, when they are the ones `gptq` will calibrate on (it would run the
    # float model over them again); not otherwise: it costs a third of this pass
    prof = Profile() if gptq is not None and (gptq.num_samples, gptq.seq_len) == tuple(windows.shape) else None

    def also(name, x, off):
        probe.calibration(name, x, off)
        if prof is not None:
            prof.observe(name, x.detach().reshape(-1, x.shape[-1]).float())
    st = calibration_stats(lm, None, verbose=verbose, enc=enc, also=also)
    if prof is not None:
        remember(lm, windows, prof)
    ev_ids = [row[m.bool()].tolist() for row, m in zip(ev["input_ids"], ev["attention_mask"])]
    cov = coverage(lm, st, _Prompts(prompts, slices), verbose=verbose, enc=ev, also=probe.evaluation)
    from .recipes import GPTQ
    with torch.inference_mode():
        converges = probe.result(gptq or GPTQ())
    widest = max(m.in_features for m in lm.module.modules() if isinstance(m, torch.nn.Linear))
    return {"n": n, "unit": f"windows of {windows.shape[1]} tokens", "texts": len(texts), "requested": requested,
            "prompts_checked": len(prompts),
            "tokens": int(windows.numel()), "widest_input": widest,
            "sufficiency": sufficiency(st, n), "gptq_convergence": converges,
            "coverage": cov, "tokens_vs_task": token_distance(windows, ev_ids),
            "missing_slices": {}, "outliers": outliers(st)}
