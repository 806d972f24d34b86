"""Calibration you can trust: too few samples or a single topic raise a warning;
a stratified 256-sample set raises none."""

import pytest

from quantgate.activations import check_calibration
from quantgate.data import split
from quantgate.diagnose import calibration_warnings

CALIBRATION_CODES = {"calibration-small", "calibration-insufficient", "calibration-coverage", "calibration-clipping"}


@pytest.fixture(scope="module")
def eval_subset(bbc):
    return split(bbc["test"], {"a": 0.7, "b": 0.3})["b"]          # 167 stratified test articles


def stratified(ds, n):
    frac = n / len(ds)
    return split(ds, {"take": frac, "rest": 1 - frac}, seed=7)["take"]


def codes(model, calib, data):
    checks = check_calibration(model, calib, data)
    return {w["code"] for w in calibration_warnings(checks)}, checks


def test_stratified_256_raises_no_calibration_warning(model, bbc, eval_subset):
    calib = stratified(bbc["train"], 256)
    assert 250 <= len(calib) <= 260 and len(set(calib.labels)) == 5
    found, checks = codes(model, calib, eval_subset)
    assert not (found & CALIBRATION_CODES), found
    assert checks["sufficiency"]["converged"] and checks["coverage"]["clip_rate"] < 1e-5


def test_four_samples_raise_a_sufficiency_warning(model, bbc, eval_subset):
    found, checks = codes(model, bbc["calibration"].head(4), eval_subset)
    assert "calibration-small" in found
    assert checks["sufficiency"]["recommended_min_samples"] >= 32


def test_a_single_topic_raises_a_coverage_warning(model, bbc, eval_subset):
    train = bbc["train"]
    sports = train.subset([i for i, y in enumerate(train.labels) if y == "sports"][:256])
    found, checks = codes(model, sports, eval_subset)
    assert "calibration-coverage" in found
    assert checks["missing_slices"]["topic"] == ["business", "entertainment", "politics", "tech"]
    # and the activations say the same: unseen topics clip more than the calibrated one
    rates = {r["value"]: r["clip_rate"] for r in checks["coverage"]["slices"]["topic"]}
    assert rates["sports"] < max(rates.values())


def test_bert_outlier_channels_are_found(model, bbc, eval_subset):
    _, checks = codes(model, stratified(bbc["train"], 64), eval_subset)
    top = checks["outliers"][0]
    # BERT-family models carry a few hidden dimensions with activations 10x+ the rest
    assert top["channel_ratio"] > 5 and top["kurtosis"] > 10


def test_lm_calibration_checks_flag_three_sentences_and_off_domain_text():
    """Measured on the bundled fine-tuned LM against 128 of its task's prompts (the test reads 48) (32 windows of 256 tokens):
    BBC training articles are 0.42 bits from the prompts' tokens (38% of prompt tokens unseen), fortunes 0.61
    (52%), three sentences 0.86 (93%) in 23 tokens, fewer than the 1,536 inputs of the widest layer."""
    from quantgate.activations import check_lm_calibration
    from quantgate.data import bbc_splits, load_texts
    from quantgate.diagnose import calibration_warnings
    from quantgate.finetune import default_finetuned_lm
    from quantgate.models import load_causal_lm
    from quantgate.tasks.prompted import bbc_topic_prompts
    from pathlib import Path
    if not Path("/usr/share/games/fortunes/fortunes").is_file():
        pytest.skip("Debian's fortunes-min is installed by `make test`")
    lm = load_causal_lm(default_finetuned_lm())
    sp = bbc_splits()
    task = bbc_topic_prompts(sp["test"]).head(48)
    three = ["The cat sat on the mat.", "Quantization makes models smaller.", "Paris is the capital of France."]
    codes = {}
    for name, cal in (("bbc", sp["train"]), ("three", three),
                      ("fortunes", load_texts("/usr/share/games/fortunes/fortunes", "text"))):
        checks = check_lm_calibration(lm, cal, task, 32, 256)
        warned = calibration_warnings(checks)
        codes[name] = {w["code"] for w in warned}
        if name == "three":
            assert checks["n"] == 1 and checks["tokens"] < checks["widest_input"]
            small = next(w for w in warned if w["code"] == "calibration-small")
            assert small["severity"] == "error" and "rank-deficient" in small["message"]
        g = checks["gptq_convergence"]
        if name == "bbc":
            assert checks["n"] == 32 and checks["sufficiency"]["converged"]
            # GPTQ's result on growing prefixes of the windows, measured on the prompts' inputs: every probed
            # layer rounds better from 32 windows than from 1 (measured 2.99 -> 2.35% and 11.8 -> 9.2% on 128 prompts)
            assert g["sizes"] == [1, 2, 4, 8, 16, 32] and len(g["errors"]) == 3
            assert all(e[-1] < e[0] for e in g["errors"].values()) and g["recommended_windows"] <= 32
        if name == "three":
            assert g["sizes"] == [1] and not g["converged"] and g["recommended_windows"] >= 32
    assert "calibration-unlike-task" not in codes["bbc"] and "calibration-small" not in codes["bbc"]
    assert "calibration-unlike-task" in codes["fortunes"] and "calibration-unlike-task" in codes["three"]
