"""Affine quantization checked against PyTorch's own quantize/dequantize reference ops."""

import pytest
import torch

from quantgate.errors import QuantgateError
from quantgate.formats import choose_qparams, dequantize, fake_quantize, quantize, qrange
from quantgate.formats.affine import qparams_from_range
from quantgate.formats.packing import pack_int4, unpack_int4

torch.manual_seed(0)
X = torch.randn(64, 96) * 3 + 0.5


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_int8_matches_torch_quantize_per_tensor(symmetric):
    qp = choose_qparams(X, 8, symmetric, "tensor")
    dtype = torch.qint8 if symmetric else torch.quint8
    ref = torch.quantize_per_tensor(X, float(qp.scale), int(qp.zero_point), dtype)
    assert torch.equal(quantize(X, qp), ref.int_repr().to(torch.int32))
    assert torch.allclose(dequantize(quantize(X, qp), qp), ref.dequantize())


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_int8_matches_torch_quantize_per_channel(symmetric):
    qp = choose_qparams(X, 8, symmetric, "channel")
    dtype = torch.qint8 if symmetric else torch.quint8
    ref = torch.quantize_per_channel(X, qp.scale.reshape(-1).double(), qp.zero_point.reshape(-1).long(), 0, dtype)
    assert torch.equal(quantize(X, qp), ref.int_repr().to(torch.int32))
    assert torch.allclose(dequantize(quantize(X, qp), qp), ref.dequantize())


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_low_bit_fake_quant_matches_torch_reference(bits, symmetric):
    qp = choose_qparams(X, bits, symmetric, "channel")
    ref = torch.fake_quantize_per_channel_affine(X, qp.scale.reshape(-1), qp.zero_point.reshape(-1), 0, qp.qmin, qp.qmax)
    assert torch.allclose(fake_quantize(X, qp), ref, atol=1e-6)
    q = quantize(X, qp)
    assert q.min() >= qp.qmin and q.max() <= qp.qmax
    assert q.unique().numel() <= 2**bits


def test_minmax_matches_pytorch_observer_qparams():
    obs = pytest.importorskip("torch.ao.quantization.observer")
    o = obs.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    o(X)
    scale, zp = o.calculate_qparams()
    qp = choose_qparams(X, 8, False, "tensor")
    assert float(qp.scale) == pytest.approx(float(scale), rel=1e-6)
    assert int(qp.zero_point) == int(zp)


def test_per_group_equals_per_channel_on_each_group():
    g = 32
    qp = choose_qparams(X, 4, False, "group", g)
    assert qp.scale.shape == (64, 3)
    for j in range(3):
        block = X[:, j * g:(j + 1) * g]
        ref = fake_quantize(block, choose_qparams(block, 4, False, "channel"))
        assert torch.allclose(fake_quantize(X, qp)[:, j * g:(j + 1) * g], ref)


def test_group_size_that_does_not_divide_gives_a_shorter_last_group():
    x = torch.randn(8, 100)
    qp = choose_qparams(x, 4, True, "group", 64)
    assert qp.scale.shape == (8, 2)
    tail = x[:, 64:]
    assert torch.allclose(fake_quantize(x, qp)[:, 64:], fake_quantize(tail, choose_qparams(tail, 4, True, "channel")))
    # error bounded by half a step everywhere
    err = (fake_quantize(x, qp) - x).abs()
    assert (err <= qp.expand(qp.scale, x.shape) / 2 + 1e-6).all()


def test_zero_is_exact_and_constant_tensors_do_not_divide_by_zero():
    z = torch.zeros(4, 16)
    for sym in (True, False):
        qp = choose_qparams(z, 8, sym, "channel")
        assert torch.equal(fake_quantize(z, qp), z)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    qp = qparams_from_range(torch.tensor(0.5), torch.tensor(3.0), 8, False)  # range widened to include 0
    assert float(dequantize(quantize(torch.tensor([0.0]), qp), qp)) == 0.0
    assert fake_quantize(x, qp)[-1] == pytest.approx(3.0, abs=float(qp.scale))


def test_bits_out_of_range_is_a_clear_error():
    with pytest.raises(QuantgateError, match="bits must be an integer from 2 to 8, got 9"):
        qrange(9, True)


def test_int4_packing_round_trips_with_odd_width():
    u = torch.randint(0, 16, (5, 33), dtype=torch.uint8)
    p = pack_int4(u)
    assert p.shape == (5, 17) and p.dtype == torch.uint8
    assert torch.equal(unpack_int4(p, 33), u)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dense_packing_round_trips_every_width(bits):
    from quantgate.formats.packing import pack_bits, packed_width, unpack_bits
    for k in (1, 7, 33, 576):
        u = torch.randint(0, 2**bits, (5, k), dtype=torch.uint8)
        p = pack_bits(u, bits)
        assert p.dtype == torch.uint8 and p.shape == (5, packed_width(k, bits))
        assert torch.equal(unpack_bits(p, bits, k), u)
    assert packed_width(576, bits) * 8 == 576 * bits        # dense: no padding bits at SmolLM2's width


@pytest.mark.parametrize("k", [128, 100, 37])
def test_nf4_dequantize_from_packed_bytes_is_bit_identical(k):
    """NF4Linear dequantizes from the packed bytes by a lookup of both nibbles' values: the same
    numbers as unpacking the codes first, for widths that fill, half-fill and miss the last block."""
    from quantgate.formats.nf4 import nf4_dequantize, nf4_dequantize_packed, nf4_quantize
    from quantgate.formats.packing import pack_bits, unpack_bits
    w = torch.randn(24, k, generator=torch.Generator().manual_seed(k))
    codes, absmax = nf4_quantize(w, 64)
    packed = pack_bits(codes, 4)
    assert torch.equal(nf4_dequantize_packed(packed, absmax, 64, k), nf4_dequantize(unpack_bits(packed, 4, k), absmax, 64, k))
