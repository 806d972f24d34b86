"""Decoder families quantgate never trained on, as tiny random-weight models
built from the configs transformers ships (no download): Llama, Mistral with a
sliding window, Qwen2 with sliding layers, Phi-3 (fused projections), GPT-NeoX
(partial rotary, its own block) and Gemma 3 (alternating sliding and global
layers, each type with its own rotary base and mask).

For each: GPTQ's sequential pass hands every block its own arguments (equal to
what the block receives in a plain forward); windows start with BOS exactly
when the tokenizer's encode does; RTN and GPTQ quantize, save, reload
bit-identically and generate; quantgate's decoder either runs the family
exactly (logits against transformers', teacher-forced) or declines it with a
reason and transformers' generate runs instead."""

import pytest
import torch

from quantgate.recipes import GPTQ, WeightOnly

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def _configs(vocab: int) -> dict:
    from transformers import (Gemma3TextConfig, GPTNeoXConfig, LlamaConfig, MistralConfig, Phi3Config,
                              Qwen2Config)
    ids = dict(vocab_size=vocab, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return {
        "llama": LlamaConfig(**SMALL, **ids, tie_word_embeddings=True),
        "mistral": MistralConfig(**SMALL, **ids, sliding_window=8),
        "qwen2": Qwen2Config(**SMALL, **ids, use_sliding_window=True, sliding_window=8, max_window_layers=2),
        "phi3": Phi3Config(**SMALL, **ids),
        "gpt_neox": GPTNeoXConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                                  rotary_pct=0.25, max_position_embeddings=256, **ids),
        "gemma3": Gemma3TextConfig(**SMALL, **ids, head_dim=16, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"] * 2,
                                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                                    "full_attention": {"rope_type": "default", "rope_theta": 1e6}}),
    }


FAMILIES = ["llama", "mistral", "qwen2", "phi3", "gpt_neox", "gemma3"]
WITH_BOS = {"llama", "gemma3"}          # their tokenizers put <bos> first, as the real ones do
DECODER = {"llama", "mistral", "qwen2"}   # families quantgate's own decoder claims


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    """Each family saved as a Hugging Face directory with a tokenizer (SmolLM2's,
    with BOS added for the families whose tokenizers add it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from quantgate.models import default_lm_dir
    out = {}
    vocab = len(AutoTokenizer.from_pretrained(default_lm_dir()))
    for name, cfg in _configs(vocab).items():
        d = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(d)
        AutoTokenizer.from_pretrained(default_lm_dir(), add_bos_token=name in WITH_BOS).save_pretrained(d)
        out[name] = d
    return out


@pytest.fixture(scope="session")
def family(family_dirs):
    from quantgate.models import load_causal_lm
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_causal_lm(family_dirs[name])
            cache[name].verbose = False
        return cache[name]
    return get


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


@pytest.mark.parametrize("name", FAMILIES)
def test_each_block_is_calibrated_with_its_own_inputs(family, name):
    from quantgate.methods.gptq import block_calls, decoder_blocks
    m = family(name).module
    _, blocks = decoder_blocks(m)
    windows = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    seen = []
    hooks = [b.register_forward_pre_hook(lambda mod, a, kw: seen.append((a, dict(kw))), with_kwargs=True)
             for b in blocks]
    with torch.inference_mode():
        m(input_ids=windows, use_cache=False)
    for h in hooks:
        h.remove()
    hidden, calls = block_calls(m, blocks, windows)
    assert len(seen) == len(calls) == len(blocks)
    with torch.inference_mode():
        for i, (block, (args, kwargs), (a, kw)) in enumerate(zip(blocks, calls, seen)):
            plain = a[0] if a else kw.pop("hidden_states")
            assert torch.equal(hidden, plain), f"{name}: block {i}'s calibration input differs from a plain forward's"
            assert _same(args, tuple(a[1:])) and _same(kwargs, kw), f"{name}: block {i} gets another block's arguments"
            out = block(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, (tuple, list)) else out
    if name == "gemma3":     # the case a single replayed call got wrong: sliding and global layers differ
        assert not _same(calls[0][1]["position_embeddings"], calls[1][1]["position_embeddings"])
        assert _same(calls[0][1]["position_embeddings"], calls[2][1]["position_embeddings"])


@pytest.mark.parametrize("name", ["llama", "gemma3", "qwen2"])
def test_windows_start_with_bos_exactly_when_the_tokenizer_does(family, bbc, name):
    from quantgate.calibration import lm_windows, token_stream
    from quantgate.tasks.causal_lm import eval_windows
    tok = family(name).tokenizer
    adds = tok(bbc["train"].texts[0])["input_ids"][0] == tok.bos_token_id
    assert adds == (name in WITH_BOS)
    cal, fp = lm_windows(tok, bbc["train"].texts, 3, 32)
    ev = eval_windows(tok, bbc["test"].texts, 32, max_windows=3)
    stream = token_stream(tok, bbc["train"].texts, limit=200)
    for w in (cal, ev):
        assert w.shape == (3, 32)
        assert bool((w[:, 0] == tok.bos_token_id).all()) == adds
    body = cal[:, 1:] if adds else cal            # the text runs on from window to window, nothing skipped
    assert torch.equal(body.reshape(-1), stream[:body.numel()])
    assert fp["bos"] == (tok.bos_token_id if adds else None)


@pytest.mark.parametrize("name", FAMILIES)
def test_rtn_and_gptq_save_reload_and_generate(family, bbc, tmp_path, name):
    from quantgate.artifact import load_lm, save
    from quantgate.quantize import quantize
    from quantgate.tasks.causal_lm import greedy
    lm = family(name)
    ids = torch.randint(3, 1000, (1, 20), generator=torch.Generator().manual_seed(1))
    for recipe in (WeightOnly(bits=4, group_size=32), GPTQ(bits=4, group_size=32, num_samples=4, seq_len=32)):
        q = quantize(lm, recipe, bbc["train"])
        assert len(q.quantized_layers) >= 4 * 4, f"{name}: only {len(q.quantized_layers)} layers quantized"
        back = load_lm(save(q, lm, tmp_path / recipe.name))
        with torch.inference_mode():
            assert torch.equal(q.module(input_ids=ids).logits, back.module(input_ids=ids).logits)
        out = greedy(back.module, back.tokenizer, ["The market rose"], 4)
        assert len(out) == 1 and 1 <= len(out[0]) <= 4


@pytest.mark.parametrize("name", FAMILIES)
def test_the_decoder_runs_a_family_exactly_or_declines_it(family, name):
    from quantgate.decoder import HF_RUNTIME, RUNTIME, Decoder, unsupported
    from quantgate.tasks.causal_lm import runtime
    m = family(name).module
    why = unsupported(m)
    if name not in DECODER:
        assert why and runtime(m) == HF_RUNTIME
        with pytest.raises(ValueError, match="cannot run this model"):
            Decoder(m)
        return
    assert why is None and runtime(m) == RUNTIME
    # 12 prompt tokens and 10 steps: past the sliding window of 8, in prefill and in decoding
    ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        gen = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                         min_new_tokens=10, pad_token_id=2)
        ref = m(input_ids=gen).logits[:, ids.shape[1] - 1:-1]       # transformers' logits at every step
        dec = Decoder(m)
        mine = [dec.prefill(ids, gen.shape[1])]
        for j in range(ids.shape[1], gen.shape[1] - 1):
            mine.append(dec.step(gen[:, j:j + 1]))
    mine = torch.stack(mine, dim=1)
    assert mine.shape == ref.shape
    torch.testing.assert_close(mine, ref, atol=2e-4, rtol=1e-4)


def test_a_long_prompt_keeps_its_bos_when_cut(family):
    from quantgate.compare import Settings
    from quantgate.tasks.prompted import PromptSet, PromptedTask
    lm = family("llama")
    long = "word " * 400 + "Topic:"
    t = PromptedTask(lm, PromptSet([long, "Article: short\nTopic:"], ["tech", "sports"], ["a", "b"]), Settings())
    full = lm.tokenizer(long)["input_ids"]
    assert t.truncated == 1 and t.prompts[0][0] == lm.tokenizer.bos_token_id
    assert t.prompts[0][1:] == full[len(full) - len(t.prompts[0]) + 1:]       # the end of the prompt, kept whole
    assert t.prompts[1][0] == lm.tokenizer.bos_token_id
