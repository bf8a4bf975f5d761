"""The analysis runtime: ONNX Runtime sessions behind TransformerLens' API. Imports no torch."""

from graphlens.runtime.activation_cache import ActivationCache
from graphlens.runtime.hook_points import HookPoint
from graphlens.runtime.hooked_transformer import HookedTransformer

__all__ = ["ActivationCache", "HookPoint", "HookedTransformer"]
