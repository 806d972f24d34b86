"""Weight-only layers: every kernel path computes what the format says it should."""

import pytest
import torch

from quantgate.formats import choose_qparams, fake_quantize
from quantgate.methods.weight_only import DEQUANT, PACKED_MAX_ROWS, WeightOnlyLinear, kernel_calls

torch.manual_seed(0)


def _ref_weight(lin, bits, g, sym):
    w = lin.weight.detach()
    return fake_quantize(w, choose_qparams(w, bits, sym, "group" if g else "channel", g))


@pytest.mark.parametrize("bits,g,sym,packed", [
    (8, None, True, "aten._weight_int8pack_mm (bf16 activations)"),
    (8, None, False, None),
    (4, 32, True, "aten._weight_int4pack_mm_for_cpu (bf16 activations)"),
    (4, 128, False, "aten._weight_int4pack_mm_for_cpu (bf16 activations)"),
    (4, 48, True, None),   # not a packed-kernel group size
])
def test_both_paths_match_the_format(bits, g, sym, packed):
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


def test_group_size_that_does_not_divide_the_width_works():
    lin = torch.nn.Linear(100, 16)   # 100 = 64 + 36: a shorter last group
    q = WeightOnlyLinear(lin, 4, 64, False)
    x = torch.randn(PACKED_MAX_ROWS + 1, 100)
    assert q.packed_kernel is None
    assert torch.allclose(q(x), torch.nn.functional.linear(x, _ref_weight(lin, 4, 64, False), lin.bias), atol=1e-5)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (16, 50)  # two int4 codes per byte


def test_storage_bits_per_weight():
    lin = torch.nn.Linear(512, 256)
    nbytes = lambda m: sum(b.numel() * b.element_size() for b in m.buffers())
    b8, b4 = nbytes(WeightOnlyLinear(lin, 8, None, True)), nbytes(WeightOnlyLinear(lin, 4, 64, True))
    # int8 codes + an fp32 scale and a zero point per row; int4 codes + fp32 scale and uint8 zero per group of 64
    assert b8 * 8 / (512 * 256) == pytest.approx(8 + 40 / 512)
    assert b4 * 8 / (512 * 256) == pytest.approx(4 + 40 / 64)
