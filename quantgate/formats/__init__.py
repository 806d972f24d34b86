"""Numeric formats: how a float tensor becomes integers and back."""
from .affine import QParams, choose_qparams, dequantize, fake_quantize, quantize, qrange

__all__ = ["QParams", "choose_qparams", "quantize", "dequantize", "fake_quantize", "qrange"]
