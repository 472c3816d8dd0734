"""purify.nn: layers built only on purify's public API."""
from purify.nn.linear import Linear, MLP

__all__ = ["Linear", "MLP"]
