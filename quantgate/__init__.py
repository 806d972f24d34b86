"""quantgate: quantize a fine-tuned model and prove the result on your own task."""

from . import _env  # noqa: F401  (offline, quiet)
from .errors import QuantgateError
from .recipes import QAT, DynamicInt8, Recipe, StaticInt8, WeightOnly

__version__ = "0.1.0"

__all__ = ["QuantgateError", "Recipe", "DynamicInt8", "StaticInt8", "WeightOnly", "QAT", "quantize", "__version__"]


def __getattr__(name):  # heavy imports (torch) only when used
    if name == "quantize":
        from .quantize import quantize
        return quantize
    raise AttributeError(name)
