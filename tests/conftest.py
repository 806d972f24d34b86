"""Shared, expensive fixtures: the fine-tuned default classifier (cached on disk,
shared with `make demo`) and one comparison of every recipe on half the BBC test split."""

import os

import pytest

os.environ.setdefault("QUANTGATE_PROGRESS", "0")
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")     # as quantgate/_env.py: before the test modules import torch


@pytest.fixture(scope="session")
def bbc():
    from quantgate.data import bbc_splits
    return bbc_splits()


@pytest.fixture(scope="session")
def finetuned_dir(bbc):
    from quantgate.finetune import finetune
    return finetune(bbc["train"], verbose=False)


@pytest.fixture(scope="session")
def model(finetuned_dir):
    from quantgate.models import load_classifier
    return load_classifier(finetuned_dir)


@pytest.fixture(scope="session")
def comparison(model, bbc):
    from quantgate.compare import Settings, compare
    from quantgate.recipes import DynamicInt8, StaticInt8, WeightOnly
    from quantgate.methods.weight_only import ROWS_ENV
    recipes = [DynamicInt8(), StaticInt8(), WeightOnly(bits=8), WeightOnly(bits=4, group_size=32)]
    s = Settings(batch_sizes=(1, 32), perf_budget_s=0.5, perf_min_reps=3, n_boot=1000, verbose=False)
    # weight-only layers dequantize for calls above 16 rows (an encoder's are 128 x batch), whatever this CPU's
    # measured crossover: the backend fallback the report must flag as slower, on every CPU
    mp = pytest.MonkeyPatch()
    mp.setenv(ROWS_ENV, "16")
    try:
        return compare(model, half_test(bbc), recipes, bbc["calibration"], s)
    finally:
        mp.undo()


def half_test(bbc):
    """Half the BBC test split (278 articles, stratified by topic): the shared comparison's data."""
    from quantgate.data import split
    return split(bbc["test"], {"a": 0.5, "b": 0.5})["a"]


@pytest.fixture(scope="session")
def report_dir(comparison, tmp_path_factory):
    from quantgate.report import write_reports
    out = tmp_path_factory.mktemp("report")
    write_reports(comparison, out)
    return out


@pytest.fixture(scope="session")
def saved_once(tmp_path_factory):
    """Artifacts saved once per session: get(key, make) with make() -> (Quantized, model) gives (Quantized, folder)."""
    from quantgate.artifact import save
    root, cache = tmp_path_factory.mktemp("artifacts"), {}

    def get(key, make):
        if key not in cache:
            q, m = make()
            cache[key] = (q, save(q, m, root / key))
        return cache[key]
    return get


@pytest.fixture(scope="session")
def pt2e_artifact(model, bbc, saved_once):
    """Saved static int8 and QAT artifacts of the classifier: (Quantized, folder) by "static" or "qat"."""
    from quantgate.quantize import quantize
    from quantgate.recipes import QAT, StaticInt8

    def get(spec):
        r = StaticInt8(num_samples=64) if spec == "static" else QAT(steps=4, batch_size=8)
        return saved_once(spec, lambda: (quantize(model, r, bbc["calibration"], train=bbc["train"]), model))
    return get
