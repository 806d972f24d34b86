"""The CUDA legs, where a GPU is present (skipped elsewhere; CI has none):
GPTQ with one block at a time on the GPU is as good, layer by layer, as the CPU run;
QLoRA trains in fp16 with a gradient scaler there; weight-only and NF4 layers
and the decoder run on a GPU (dequantized: the packed kernels are CPU kernels);
quantizing from disk puts one block at a time on the GPU.

The model is SmolLM2's architecture and tokenizer with 4 randomly initialized
layers: these properties don't depend on the weights, and the tests need only
the config and tokenizer files (QUANTGATE_LM_CONFIG_DIR, else the default
model's directory)."""

import os

import pytest
import torch

from quantgate.recipes import GPTQ, NF4, QLoRA, WeightOnly

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def small_lm():
    from quantgate.models import causal_lm_from_config, default_lm_dir
    return causal_lm_from_config(os.environ.get("QUANTGATE_LM_CONFIG_DIR") or default_lm_dir(), num_layers=4)


def test_gptq_on_the_gpu_matches_the_cpu_run(small_lm, bbc):
    from quantgate.quantize import quantize
    kw = dict(bits=4, group_size=64, num_samples=8, seq_len=128)
    cpu = quantize(small_lm, GPTQ(device="cpu", **kw), bbc["train"])
    gpu = quantize(small_lm, GPTQ(device="cuda", **kw), bbc["train"])
    assert all(p.device.type == "cpu" for p in gpu.module.parameters())        # the result lives on the CPU
    assert gpu.calibration["hash"] == cpu.calibration["hash"]
    assert sorted(gpu.quantized_layers) == sorted(cpu.quantized_layers) and len(cpu.quantized_layers) == 4 * 7
    # the first layer sees the same input on both: the same codes but for float sums in another order;
    # later layers see inputs that already differ by those few flips, so compare their quality instead
    first = "model.layers.0.self_attn.q_proj"
    a, b = cpu.module.get_submodule(first).codes(), gpu.module.get_submodule(first).codes()
    assert float((a == b).float().mean()) > 0.99
    for name, err in cpu.extra["layer_errors"].items():
        assert abs(gpu.extra["layer_errors"][name] - err) <= 0.1 * err + 1e-6, (name, err, gpu.extra["layer_errors"][name])


def test_qlora_trains_in_fp16_with_a_gradient_scaler_on_the_gpu(small_lm, bbc, tmp_path):
    from quantgate.artifact import load_lm, save
    from quantgate.quantize import quantize
    r = QLoRA(rank=4, alpha=8, steps=12, batch_size=2, seq_len=64, lr=1e-3, targets=("q_proj", "v_proj"))
    q = quantize(small_lm, r, train=bbc["train"])
    t = q.extra["training"]
    assert t["device"] == "cuda" and t["precision"] == "fp16"
    losses = t["losses"]
    assert all(map(torch.isfinite, torch.tensor(losses))) and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert all(p.device.type == "cpu" for p in q.module.parameters())
    save(q, small_lm, tmp_path / "q")
    back = load_lm(tmp_path / "q")
    ids = small_lm.tokenizer("Shares rose", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(back.module(input_ids=ids).logits, q.module(input_ids=ids).logits)


@pytest.mark.parametrize("recipe", [WeightOnly(bits=4, group_size=64), NF4()], ids=["int4-g64", "nf4"])
def test_quantized_layers_and_the_decoder_run_on_the_gpu(small_lm, recipe, monkeypatch):
    import copy
    from quantgate.decoder import Decoder
    from quantgate.methods.weight_only import DEQUANT, ROWS_ENV, kernel_calls
    from quantgate.quantize import quantize
    monkeypatch.setenv(ROWS_ENV, "16")          # the CPU reference dequantizes above 16 rows, as the GPU always does
    q = quantize(small_lm, recipe).module
    ids = small_lm.tokenizer(["The BBC reported today that the government said " * 3], return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 16                     # the CPU run dequantizes too: same arithmetic on both
    with torch.inference_mode():
        ref = q(input_ids=ids).logits
        g = copy.deepcopy(q).cuda()
        for m in g.modules():
            if hasattr(m, "calls"):
                m.calls.clear()
        out = g(input_ids=ids.cuda()).logits.cpu()
        short = g(input_ids=ids[:, :4].cuda()).logits.cpu()      # 4 rows: would take a packed kernel on the CPU
    assert (out - ref).abs().max() < 1e-3
    if isinstance(recipe, WeightOnly):
        assert set(kernel_calls(g)) == {DEQUANT}
    with torch.inference_mode():
        mine = Decoder(g).prefill(ids[:, :4], 8).cpu()
    assert (mine - short[:, -1]).abs().max() < 1e-3


def test_quantizing_from_disk_onloads_one_block_at_a_time_to_the_gpu(small_lm, bbc, tmp_path):
    """GPTQ from bf16 shards with the blocks on the GPU one at a time (the streaming path's
    quantize_block is the in-memory path's): the GPU holds the hidden states and one block, never the
    model, and the result predicts as the in-memory GPU run of the fp32 model does (bf16 on disk:
    slightly other weights, so not bit for bit)."""
    from quantgate.artifact import load_lm
    from quantgate.quantize import quantize
    from quantgate.streaming import quantize_stored
    d = tmp_path / "stored"
    import copy
    copy.deepcopy(small_lm.module).to(torch.bfloat16).save_pretrained(d, max_shard_size="20MB")
    small_lm.tokenizer.save_pretrained(d)
    r = GPTQ(device="cuda", bits=4, group_size=64, num_samples=8, seq_len=128)
    torch.cuda.reset_peak_memory_stats()
    out = quantize_stored(d, r, bbc["train"], tmp_path / "q", verbose=False)
    peak = torch.cuda.max_memory_allocated()
    block = sum(p.numel() for p in small_lm.module.model.layers[0].parameters()) * 4
    bound = 2 * block + 64 * 2**20                    # a block, its work, the hidden states and Hessians
    assert bound < sum(p.numel() for p in small_lm.module.parameters()) * 4 and peak < bound, (peak, bound)
    back = load_lm(out)
    mem = quantize(small_lm, r, bbc["train"])
    import json
    assert sorted(json.loads((out / "manifest.json").read_text())["quantized_layers"]) == sorted(mem.quantized_layers)
    ids = small_lm.tokenizer("Shares rose after the report", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        a, b = back.module(input_ids=ids).logits, mem.module(input_ids=ids).logits
    assert torch.isfinite(a).all() and float((a.argmax(-1) == b.argmax(-1)).float().mean()) > 0.8
