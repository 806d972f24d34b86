"""Weight-only layers: every kernel path computes what the format says it should."""

import pytest
import torch

from quantgate.formats import choose_qparams, fake_quantize
from quantgate.methods.weight_only import (DEQUANT, INT4_KERNEL, ROW_STEPS, ROWS_ENV, WeightOnlyLinear, fp16_scales,
                                          kernel_calls, packed_max_rows)

torch.manual_seed(0)


def _ref_weight(lin, bits, g, sym):
    w = lin.weight.detach()
    return fake_quantize(w, fp16_scales(choose_qparams(w, bits, sym, "group" if g else "channel", g)))


@pytest.mark.parametrize("bits,g,sym,packed", [
    (8, None, True, "aten._weight_int8pack_mm (bf16 activations)"),
    (8, None, False, None),
    (4, 32, True, "aten._weight_int4pack_mm_for_cpu (bf16 activations)"),
    (4, 128, False, "aten._weight_int4pack_mm_for_cpu (bf16 activations)"),
    (4, 48, True, None),   # not a packed-kernel group size
    (3, 64, False, "aten._weight_int4pack_mm_for_cpu (bf16 activations)"),  # 3-bit codes run the int4 kernel
    (2, 128, True, "aten._weight_int4pack_mm_for_cpu (bf16 activations)"),
])
def test_both_paths_match_the_format(bits, g, sym, packed, monkeypatch):
    monkeypatch.setenv(ROWS_ENV, "16")                 # the packed kernel for <= 16 rows, else dequantize
    lin = torch.nn.Linear(384, 64)
    q = WeightOnlyLinear(lin, bits, g, sym)
    assert q.packed_kernel == packed
    assert torch.allclose(q.dequantized_weight(), _ref_weight(lin, bits, g, sym), atol=1e-6)
    big = torch.randn(4, 32, 384)                      # 128 rows: dequantize + fp32 matmul, exact
    ref = torch.nn.functional.linear(big, _ref_weight(lin, bits, g, sym), lin.bias)
    assert torch.allclose(q(big), ref, atol=1e-4)
    small = torch.randn(2, 384)                        # 2 rows: packed kernel on bf16 activations
    ref = torch.nn.functional.linear(small, _ref_weight(lin, bits, g, sym), lin.bias)
    rel = (q(small) - ref).norm() / ref.norm()
    assert rel < (1e-2 if packed else 1e-5)
    calls = kernel_calls(q)
    assert calls[DEQUANT] == (1 if packed else 2) and calls.get(packed, 0) == (1 if packed else 0)


@pytest.mark.parametrize("bits", [4, 3])
def test_group_size_that_does_not_divide_the_width_works(bits, monkeypatch):
    lin = torch.nn.Linear(576, 16)   # 576 = 4 x 128 + 64: a shorter last group (SmolLM2's width)
    q = WeightOnlyLinear(lin, bits, 128, False)
    assert q.packed_kernel and q.scales.shape == (16, 5)
    ref_w = _ref_weight(lin, bits, 128, False)
    monkeypatch.setenv(ROWS_ENV, "16")             # the packed kernel for <= 16 rows, else dequantize
    x = torch.randn(17, 576)                       # dequantize path: exact
    assert torch.allclose(q(x), torch.nn.functional.linear(x, ref_w, lin.bias), atol=1e-5)
    x = torch.randn(3, 576)                       # packed kernel on a zero-padded width
    ref = torch.nn.functional.linear(x, ref_w, lin.bias)
    assert (q(x) - ref).norm() / ref.norm() < 1e-2
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (16, 576 * bits // 8)   # dense packing


def test_storage_bits_per_weight():
    lin = torch.nn.Linear(512, 256)
    nbytes = lambda m: sum(b.numel() * b.element_size() for b in m.buffers())
    b8, b4 = nbytes(WeightOnlyLinear(lin, 8, None, True)), nbytes(WeightOnlyLinear(lin, 4, 64, True))
    b3 = nbytes(WeightOnlyLinear(lin, 3, 64, False))
    # symmetric: codes + one fp16 scale per row or group, no zero points (they are 2^(bits-1))
    assert b8 * 8 / (512 * 256) == pytest.approx(8 + 16 / 512)
    assert b4 * 8 / (512 * 256) == pytest.approx(4 + 16 / 64)
    # asymmetric: plus a zero point per group, packed at the code width
    assert b3 * 8 / (512 * 256) == pytest.approx(3 + (16 + 3) / 64)


def test_the_kernel_crossover_is_measured_on_this_cpu_and_routes_every_call(monkeypatch):
    """Where the packed kernel stops beating dequantize + fp32 depends on the CPU (native bf16 or
    not): measured once per process, not assumed; $QUANTGATE_PACKED_MAX_ROWS fixes it."""
    import math
    monkeypatch.delenv(ROWS_ENV, raising=False)
    from quantgate.methods.weight_only import _measured_rows
    state = torch.random.get_rng_state()
    assert _measured_rows.__wrapped__(INT4_KERNEL) in (0, *ROW_STEPS, math.inf)      # a measurement, uncached
    assert torch.equal(torch.random.get_rng_state(), state)          # it draws nothing from the caller's RNG
    limit = packed_max_rows(INT4_KERNEL)
    assert limit in (0, *ROW_STEPS, math.inf) and packed_max_rows(INT4_KERNEL) == limit     # measured once
    q = WeightOnlyLinear(torch.nn.Linear(256, 64), 4, 128, False)
    assert "measured on this CPU" in q.kernel
    for rows in (1, 4096):
        q.calls.clear()
        q(torch.randn(rows, 256))
        assert set(q.calls) == {INT4_KERNEL if rows <= limit else DEQUANT}
    monkeypatch.setenv(ROWS_ENV, "0")                  # fixed: always dequantize
    q.calls.clear()
    q(torch.randn(1, 256))
    assert set(q.calls) == {DEQUANT} and "no call (fixed by $QUANTGATE_PACKED_MAX_ROWS)" in q.kernel
