"""Exports, each proven in the library that loads it: compressed-tensors through
transformers, GGUF through transformers' GGUF loader and the gguf reader, a
QLoRA artifact's adapters through peft. Logits must be bit-identical to
quantgate's own model on the same input (long enough that quantgate runs the
dequantized fp32 path, the arithmetic every runtime's dequantizing loader does);
what cannot be exact is refused with the recipe that can."""

import json
from types import SimpleNamespace

import pytest
import torch

from quantgate.cli import main
from quantgate.errors import QuantgateError
from quantgate.recipes import GPTQ, QLoRA, Recipe

LATER_BLOCKS = ("model.layers.[3-9].*", "model.layers.[12]?.*")
TEXT = ("Shares in the bank rose sharply on Monday after the report, and the capital of France is Paris while "
        "the capital of Germany is Berlin.")


@pytest.fixture(scope="module")
def smol():
    from quantgate.models import load_causal_lm
    lm = load_causal_lm()
    lm.verbose = False
    return lm


@pytest.fixture(scope="module")
def saved(smol, saved_once, bbc):
    """Artifact folders by recipe name, quantized once."""
    from quantgate.quantize import quantize

    def get(spec):
        # GPTQ on the first three blocks only (the rest stay float): the same layer format, a short test
        # "mixed": int4 in groups of 64 with every v_proj at int8 per channel (int8_layers)
        r = (GPTQ(bits=4, group_size=64, num_samples=4, seq_len=64, exclude=LATER_BLOCKS) if spec == "gptq"
             else Recipe.from_dict(Recipe.parse("int4-g64").to_dict() | {"int8_layers": ["*.v_proj"]})
             if spec == "mixed" else Recipe.parse(spec))
        return saved_once(f"lm-{spec}", lambda: (quantize(smol, r, bbc["train"]), smol))[1]
    return get


@pytest.fixture(autouse=True)
def dequantize_above_16_rows(monkeypatch):
    """The exports hold quantgate's dequantized weights, which the runtimes multiply in fp32: quantgate's
    side of each bit-identical check runs that path too (its packed kernels take bf16 activations)."""
    from quantgate.methods.weight_only import ROWS_ENV
    monkeypatch.setenv(ROWS_ENV, "16")


def logits(module, tok):
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 16          # above 16 rows (dequantize_above_16_rows): dequantize + fp32
    with torch.inference_mode():
        return module(input_ids=ids).logits


@pytest.mark.parametrize("spec", ["int4-g64", "int8", "int3-g64", "gptq", "mixed"])
def test_compressed_tensors_loads_in_transformers_bit_identical(saved, tmp_path, spec):
    from transformers import AutoModelForCausalLM

    from quantgate.artifact import load_lm
    from quantgate.export import export
    art = load_lm(saved(spec))
    rec = export(saved(spec), "compressed-tensors", tmp_path / "ct")
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "pack-quantized"
    assert rec["exact"] and rec["layers"] == (21 if spec == "gptq" else 210)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32).eval()
    assert torch.equal(logits(hf, art.tokenizer), logits(art.module, art.tokenizer))


def test_gptq_checkpoint_reads_back_exactly(saved, smol, tmp_path):
    """Through the GPTQ-layout reader that bench/ checked against GPTQModel's own checkpoints: every layer's
    weights, and a float model filled from the checkpoint gives quantgate's logits bit for bit."""
    from transformers import AutoModelForCausalLM, GPTQConfig
    from safetensors.torch import load_file

    from quantgate.artifact import load_lm
    from quantgate.export import export
    from quantgate.export.gptq import read_weights
    art = load_lm(saved("gptq"))
    export(saved("gptq"), "gptq", tmp_path / "g")
    qc = json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq" and qc["bits"] == 4
    assert GPTQConfig.from_dict(qc).group_size == 64            # transformers reads the config as its own
    weights = read_weights(tmp_path / "g")
    assert len(weights) == 21
    for key, w in weights.items():
        assert torch.equal(w, art.module.get_submodule(key.removesuffix(".weight")).dequantized_weight()), key
    asym = load_lm(saved("int4-g64-asym"))                   # zero points (all >= 1 here) minus 1, read back
    export(saved("int4-g64-asym"), "gptq", tmp_path / "a")
    for key, w in read_weights(tmp_path / "a").items():
        assert torch.equal(w, asym.module.get_submodule(key.removesuffix(".weight")).dequantized_weight()), key
    state = {k: v for k, v in load_file(str(tmp_path / "g" / "model.safetensors")).items()
             if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))} | weights
    cfg = smol.module.config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    plain.tie_weights()
    assert torch.equal(logits(plain, art.tokenizer), logits(art.module, art.tokenizer))


def test_exports_refuse_what_they_cannot_write_exactly(saved, tmp_path):
    from quantgate.export import export
    with pytest.raises(QuantgateError, match=r"576 wide, group 128; quantize with group 64 \(e.g. int4-g64\)"):
        export(saved("int4-g128"), "compressed-tensors", tmp_path / "a")
    with pytest.raises(QuantgateError, match="asymmetric"):
        export(saved("int4-g64-asym"), "compressed-tensors", tmp_path / "b")
    with pytest.raises(QuantgateError, match=r"blocks of 32 weights.*int4-g32 \(Q4_0\)"):
        export(saved("int4-g64"), "gguf", tmp_path / "c")
    with pytest.raises(QuantgateError, match="NF4 has no GGUF block type"):
        export(saved("nf4"), "gguf", tmp_path / "d")
    with pytest.raises(QuantgateError, match="no LoRA adapters"):
        export(saved("int4-g64"), "peft", tmp_path / "e")
    with pytest.raises(QuantgateError, match="causal-lm artifact and onnx is for a sequence-classification"):
        export(saved("int4-g64"), "onnx", tmp_path / "e")
    with pytest.raises(QuantgateError, match=r"group 128; quantize with group 64 \(e.g. gptq-int4-g64\)"):
        export(saved("int4-g128"), "gptq", tmp_path / "f")
    from quantgate.export import gptq
    from quantgate.methods.weight_only import WeightOnlyLinear
    lin = torch.nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.uniform_(0.1, 1.0)                      # all positive: min-max puts the zero point at 0
    with pytest.raises(QuantgateError, match="zero point of 0"):
        gptq.check(SimpleNamespace(layers={"x": WeightOnlyLinear(lin, 4, 64, symmetric=False)}, nf4=[],
                                   weights_only=lambda: None))
    with pytest.raises(QuantgateError, match="mixes"):
        export(saved("int4-g64-head8"), "gptq", tmp_path / "h")
    assert not any(tmp_path.iterdir())                 # nothing half-written


# Q8_0 is checked through the head of the second case (int8 in groups of 32), Q4_0 through every block
@pytest.mark.parametrize("spec,kind", [("int4-g32", "Q4_0"), ("int4-g32-head8g32", "Q4_0")])
def test_gguf_loads_in_transformers_and_reads_back_exactly(saved, tmp_path, spec, kind):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quantgate.artifact import load_lm
    from quantgate.export import export
    from quantgate.export.gguf import _permute
    art = load_lm(saved(spec))
    rec = export(saved(spec), "gguf", tmp_path / "g")
    assert rec["tensor_types"][kind] == 210 and rec["notes"] == []
    if spec.endswith("head8g32"):          # the tied head's int8 copy in groups of 32: llama.cpp's Q8_0 output
        assert rec["tensor_types"]["Q8_0"] == 1
    else:                                  # transformers' loader once (30 s); the head's Q8_0 is read back below
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "g", gguf_file="model.gguf", dtype=torch.float32).eval()
        assert torch.equal(logits(hf, art.tokenizer), logits(art.module, art.tokenizer))
        tok = AutoTokenizer.from_pretrained(tmp_path / "g", gguf_file="model.gguf")
        assert tok(TEXT)["input_ids"] == art.tokenizer(TEXT)["input_ids"]
    # the gguf package's own reader and dequantizer: the stored blocks are quantgate's weights, in llama.cpp's order
    r = gguf.GGUFReader(str(tmp_path / "g" / "model.gguf"))
    t = {x.name: x for x in r.tensors}
    att = art.module.model.layers[3].self_attn
    checks = [("blk.3.attn_q.weight", att.q_proj, 9, kind), ("blk.3.attn_v.weight", att.v_proj, None, kind)]
    if spec.endswith("head8g32"):
        checks.append(("output.weight", art.module.lm_head, None, "Q8_0"))
    for name, mod, heads, k in checks:
        assert t[name].tensor_type.name == k
        w = torch.from_numpy(gguf.quants.dequantize(t[name].data, t[name].tensor_type).copy())
        ours = mod.dequantized_weight()
        ours = torch.from_numpy(_permute(ours, heads).copy()) if heads else ours
        assert torch.equal(w.float(), ours)


def test_qlora_adapters_load_in_peft(smol, bbc, tmp_path):
    from peft import PeftModel

    from quantgate.artifact import load_lm, save
    from quantgate.export import export
    from quantgate.quantize import quantize
    r = QLoRA(rank=4, alpha=8, steps=2, batch_size=2, seq_len=32, targets=("q_proj", "v_proj"))
    art_dir = save(quantize(smol, r, train=bbc["train"]), smol, tmp_path / "qlora")
    rec = export(art_dir, "peft", tmp_path / "adapters")
    cfg = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["r"] == 4 and rec["adapters"] == 60
    art = load_lm(art_dir)
    base = load_lm(art_dir, adapters=False).module
    served = PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
    assert torch.equal(logits(served, art.tokenizer), logits(art.module, art.tokenizer))


def test_export_cli_from_a_registry_version(smol, tmp_path, capsys):
    from quantgate.quantize import quantize
    from quantgate.registry import Registry
    row = Registry(tmp_path / "reg").register(quantize(smol, Recipe.parse("int4-g32")), smol, "smol")
    out = tmp_path / "deploy"
    assert main(["export", row["version"], "--format", "gguf", "--out", str(out), "--registry", str(tmp_path / "reg")]) == 0
    assert "Q4_0 x210" in capsys.readouterr().out and (out / "EXPORT.json").is_file()
    assert json.loads((out / "EXPORT.json").read_text())["artifact"]["content_hash"] == row["content_hash"]
    art = row["path"]
    assert main(["export", art, "--format", "gguf", "--out", str(out)]) == 2                       # exists
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    assert main(["export", art, "--format", "gguf", "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert "not a quantgate export" in capsys.readouterr().err and (tmp_path / "mine").is_dir()
    assert main(["export", art, "--format", "gguf", "--out", str(out), "--overwrite"]) == 0


@pytest.mark.parametrize("spec", ["static", "qat"])
def test_onnx_runs_in_onnx_runtime_as_quantgate_does(model, bbc, pt2e_artifact, tmp_path, spec):
    """Within the stated tolerance: int8 kernels of two runtimes round differently (see export/onnx.py)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from quantgate.artifact import load
    from quantgate.export import export
    _, folder = pt2e_artifact(spec)
    rec = export(folder, "onnx", tmp_path / "onnx")
    assert rec["ops"]["QuantizeLinear"] >= 6 * 4 and rec["ops"]["DequantizeLinear"] >= 6 * 6 + 1
    g = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    int8 = [t for t in g.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8) >= 36                                             # the weights are int8 initialisers
    s = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    texts, labels = bbc["test"].texts[:200], bbc["test"].labels[:200]
    enc = model.encode(texts)
    ours = load(folder).module
    o, ref = [], []
    for i in range(0, len(texts), 50):
        ids, am = enc["input_ids"][i:i + 50], enc["attention_mask"][i:i + 50]
        o.append(s.run(None, {"input_ids": ids.numpy(), "attention_mask": am.numpy()})[0])
        with torch.inference_mode():
            ref.append(ours(ids, am).numpy())
    o, ref = np.concatenate(o), np.concatenate(ref)
    y = np.array([model.labels.index(v) for v in labels])
    assert np.abs(o - ref).max() < 0.25
    assert (o.argmax(-1) == ref.argmax(-1)).mean() >= 0.99
    assert abs((o.argmax(-1) == y).mean() - (ref.argmax(-1) == y).mean()) <= 0.01


def test_onnx_refuses_what_it_cannot_express(model, tmp_path):
    from quantgate.artifact import save
    from quantgate.export import export
    from quantgate.quantize import quantize
    with pytest.raises(QuantgateError, match="dynamic-pt2e"):
        export(save(quantize(model, Recipe.parse("dynamic-torch.ao")), model, tmp_path / "d"), "onnx", tmp_path / "o")
    with pytest.raises(QuantgateError, match="quantize with static"):
        export(save(quantize(model, Recipe.parse("int8")), model, tmp_path / "w"), "onnx", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_comparison_served_in_onnx_runtime(model, bbc):
    """--runtime onnxruntime: the baseline and each candidate exported, then scored and timed in ONNX Runtime."""
    import numpy as np

    from quantgate.compare import Settings, compare
    from quantgate.recipes import DynamicInt8, StaticInt8
    data = bbc["test"].head(96)
    s = Settings(batch_sizes=(1, 8), perf_budget_s=0.3, perf_min_reps=3, n_boot=200, verbose=False,
                 serve_in="onnxruntime")
    comp = compare(model, data, [StaticInt8(num_samples=64)], bbc["calibration"], s)
    c = comp.candidates[0]
    assert comp.environment["serving_runtime"].startswith("ONNX Runtime") and c.kernel.startswith("ONNX Runtime")
    assert c.perf["batch_sizes"]["8"]["p50_ms"] > 0 and comp.baseline["accuracy"] > 0.9
    assert abs(c.metrics["accuracy"]["candidate"] - comp.baseline["accuracy"]) < 0.05
    with pytest.raises(QuantgateError, match="cannot run in ONNX Runtime"):
        compare(model, data, [DynamicInt8(backend="torch.ao")], None, s)
    assert np.isfinite(c.mean_kl)


def _llama_cpp_python():
    from quantgate.export import llamacpp
    try:
        return llamacpp.python()
    except QuantgateError:
        return None


needs_llama_cpp = pytest.mark.skipif(_llama_cpp_python() is None,
                                     reason="llama-cpp-python is not installed (bash bench/setup_deploy.sh)")


@needs_llama_cpp
def test_llama_cpp_runs_the_gguf_export_as_quantgate_does(smol, tmp_path):
    """llama.cpp's own logits for the fp32 model match PyTorch's; for int8/int4 they differ by more than the
    weights do, because llama.cpp's quantized matmuls round the activations to 8 bits (Q8_0) as well
    (measured: int8-g32 moves the logits by up to 0.98 from fp32 in PyTorch, by 1.99 in llama.cpp)."""
    from quantgate.export import llamacpp
    from quantgate.quantize import quantize
    ids = smol.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    for spec in ("fp32", "int4-g32"):
        module = smol.module if spec == "fp32" else quantize(smol, Recipe.parse(spec)).module
        served = llamacpp.serve(module, smol, tmp_path / spec, spec, n_ctx=64)
        try:
            ours, theirs = logits(module, smol.tokenizer)[0], served(input_ids=ids).logits[0]
            top = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
            if spec == "fp32":
                assert (ours - theirs).abs().max() < 0.1 and top == 1.0
            else:
                assert (ours - theirs).abs().max() < 4 and top >= 0.85
            lp = served.continuation_logprobs(ids, torch.ones_like(ids), [(0, 3, 5)])[0]
            assert torch.allclose(lp, torch.log_softmax(theirs[3:8], -1), atol=1e-5)   # the task's path, same logits
            gen = served.generate(ids[:, :10], max_new_tokens=6, pad_token_id=0)
            assert gen.shape == (1, 16) and torch.equal(gen[:, :10], ids[:, :10])
            ttft, lat = served.timed_decode(ids[:, :10], 4)
            assert ttft > 0 and len(lat) == 4 and served.process_memory()["memory_mb"] > 0
        finally:
            served.close()


@needs_llama_cpp
def test_a_language_model_comparison_served_in_llama_cpp():
    """--runtime llama.cpp: the fp32 model and each candidate exported as GGUF, scored and timed by llama.cpp;
    its fp32 answers are PyTorch's (llama.cpp's F32 logits match to 0.1)."""
    from quantgate.compare import Comparer, Settings
    from quantgate.data import bbc_splits
    from quantgate.finetune import default_finetuned_lm
    from quantgate.models import load_causal_lm
    from quantgate.tasks.prompted import PromptedTask, bbc_topic_prompts
    lm = load_causal_lm(default_finetuned_lm())
    data = bbc_topic_prompts(bbc_splits()["test"]).head(24)
    s = Settings(runtime="llama.cpp", decode_steps=4, decode_rounds=1, n_boot=200, verbose=False)
    c = Comparer(lm, data, None, s)
    c.add(Recipe.parse("int4-g32"))
    comp = c.finish()
    cand = comp.candidates[0]
    assert comp.environment["serving_runtime"].startswith("llama.cpp") and cand.kernel.startswith("llama.cpp")
    assert list(cand.perf["batch_sizes"]) == ["1"] and cand.perf["batch_sizes"]["1"]["tokens_per_s"] > 0
    assert "llama.cpp" in cand.perf["memory_from"] and 0 < cand.perf["memory_mb"] < comp.baseline["perf"]["memory_mb"]
    assert "llama.cpp's greedy decoding" in comp.task["about"] and comp.environment["served_as"] == "GGUF"
    torch_answers = PromptedTask(lm, data, Settings(verbose=False)).score(lm.module, "fp32").answers
    assert sum(a == b for a, b in zip(c.base.answers, torch_answers)) >= 22
    assert comp.baseline["exact_match"] > 0.7 and cand.mean_kl > 0


def test_llama_cpp_runtime_refuses_before_any_work(monkeypatch, capsys):
    import sys
    assert main(["lm", "compare", "--runtime", "llama.cpp", "--recipes", "nf4"]) == 2
    assert "--runtime llama.cpp runs GGUF: nf4 has no GGUF block type" in capsys.readouterr().err
    assert main(["lm", "compare", "--runtime", "llama.cpp", "--recipes", "int4-g64"]) == 2
    assert "int4 group 64" in capsys.readouterr().err
    assert main(["lm", "compare", "--runtime", "llama.cpp", "--batch-sizes", "1,8", "--recipes", "int4-g32"]) == 2
    assert "use --batch-sizes 1" in capsys.readouterr().err
    monkeypatch.setenv("QUANTGATE_LLAMA_CPP_PYTHON", sys.executable)      # the test's own Python has no llama_cpp
    assert main(["lm", "compare", "--runtime", "llama.cpp", "--recipes", "int4-g32"]) == 2
    assert "has no llama_cpp; run `bash bench/setup_deploy.sh" in capsys.readouterr().err
