"""Sequence classification: run a candidate over a dataset, keep every example's
class probabilities so a comparison can find each changed prediction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import Dataset
from ..models import Model, label_ids
from ..progress import progress


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
