"""Sequence classification: run a candidate over a labelled dataset, keep every
example's class probabilities so a comparison can find each changed prediction;
accuracy and macro-F1 with paired intervals, overall and per slice; latency per
call at each batch size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import Dataset
from ..errors import require
from ..evaluate import metrics, perf
from ..models import Model, label_ids
from ..progress import progress
from . import metric


@dataclass
class Predictions:
    probs: np.ndarray   # [n, classes]
    labels: np.ndarray  # [n] true class ids

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def predict(module: torch.nn.Module, model: Model, data: Dataset, batch_size: int = 32, verbose: bool = True,
            desc: str = "evaluate") -> Predictions:
    """Class probabilities for every example. The last batch is padded to
    `batch_size` so compiled candidates see a single input shape."""
    y = label_ids(model, data.labels, where=f"evaluation data {data.source or ''}".strip()).numpy()
    enc = model.encode(data.texts)
    n = len(data)
    out = []
    with torch.inference_mode(), progress(total=n, desc=desc, enabled=verbose) as bar:
        for i in range(0, n, batch_size):
            ids, am = enc["input_ids"][i:i + batch_size], enc["attention_mask"][i:i + batch_size]
            real = ids.shape[0]
            if real < batch_size:
                pad = batch_size - real
                ids = torch.cat([ids, ids[-1:].expand(pad, -1)])
                am = torch.cat([am, am[-1:].expand(pad, -1)])
            logits = module(ids, am)[:real].float()
            out.append(torch.softmax(logits, dim=-1).numpy())
            bar.update(real)
    return Predictions(np.concatenate(out), y)


def mean_kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> float:
    return float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1)))


class Classification:
    kind = "sequence-classification"
    primary = "accuracy"
    metrics = [metric("accuracy", "accuracy"), metric("macro_f1", "macro-F1")]
    changed_columns = [("id", "id"), ("label", "label"), ("baseline", "baseline"), ("baseline_prob", "p"),
                       ("candidate", "candidate"), ("candidate_prob", "p"), ("text", "text")]
    items = "examples"
    batch_sizes = (1, 32)          # latency, when the settings name none

    def __init__(self, model: Model, data: Dataset, settings):
        require(len(data) > 0, "evaluation data is empty")
        self.model, self.data, self.s = model, data, settings

    def describe(self) -> dict:
        d = self.data
        return {"kind": self.kind, "primary": self.primary, "metrics": self.metrics, "items": self.items,
                "changed_columns": self.changed_columns, "changed_title": "Changed predictions", "latency_unit": "call",
                "token_evidence": False, "about": f"{len(d)} examples of {d.source or 'the evaluation data'}",
                "data": {"source": d.source, "n": len(d), "fingerprint": d.fingerprint(), "dropped": d.dropped,
                         "slices": {k: sorted(set(v)) for k, v in d.slices.items()}}}

    def score(self, module, name: str) -> Predictions:
        return predict(module, self.model, self.data, self.s.eval_batch_size, self.s.verbose, desc=f"evaluate {name}")

    def summary(self, r: Predictions) -> dict:
        return {"accuracy": metrics.accuracy(r.labels, r.pred),
                "macro_f1": metrics.macro_f1(r.labels, r.pred, len(self.model.labels))}

    def compare(self, base: Predictions, cand: Predictions) -> dict:
        s, y, pb, pc = self.s, base.labels, base.pred, cand.pred
        return {"metrics": metrics.paired_bootstrap(y, pb, pc, s.n_boot, s.seed),
                "mcnemar": metrics.mcnemar(y, pb, pc),
                "slices": metrics.slice_deltas(y, pb, pc, self.data.slices, s.n_boot, s.seed),
                "agreement": float((pb == pc).mean()), "mean_kl": mean_kl(base.probs, cand.probs),
                "changed": self.changed(base, cand, s.max_changed), "n_changed": int((pb != pc).sum())}

    def changed(self, base: Predictions, cand: Predictions, limit: int) -> list[dict]:
        """Every example whose predicted class changed, largest probability shift first."""
        data, labels = self.data, self.model.labels
        pb, pc = base.pred, cand.pred
        idx = np.flatnonzero(pb != pc)
        shift = np.abs(base.probs[idx] - cand.probs[idx]).sum(axis=1)
        return [{"id": data.ids[i], "text": data.texts[i][:400], "label": data.labels[i],
                 "baseline": labels[pb[i]], "baseline_prob": float(base.probs[i, pb[i]]),
                 "candidate": labels[pc[i]], "candidate_prob": float(cand.probs[i, pc[i]]),
                 "slices": {k: v[i] for k, v in data.slices.items()}}
                for i in idx[np.argsort(-shift)][:limit]]

    def memory_probe(self):
        """(call(module), what it is): one forward pass at the largest latency batch size."""
        bs = max(self.s.batch_sizes)
        enc = self.model.encode(self.data.texts[:bs])

        @torch.inference_mode()
        def call(module):
            module(enc["input_ids"], enc["attention_mask"])
        return call, f"one forward pass at batch {bs}"

    def speed(self, modules: dict, share: float = 1.0) -> dict[str, dict]:
        s = self.s
        return perf.measure(modules, self.model, self.data.texts, s.batch_sizes,
                            min_reps=max(2, round(s.perf_min_reps * share)), budget_s=s.perf_budget_s * share)
