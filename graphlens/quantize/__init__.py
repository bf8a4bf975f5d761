"""Quantized bundles: ONNX Runtime's int4 (MatMulNBits) and int8 (dynamic) weight quantization of a
bundle's graphs, every hook kept; weights dequantised on read; ``compare`` measures what it changes.

Imports are lazy: the runtime reads ``dequantise`` without the export side (torch)."""

from importlib import import_module

_WHERE = {"quantize_bundle": "bundle", "export_quantized": "bundle", "dequantised": "dequantise",
          "METHODS": "methods", "compare_bundles": "compare"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"graphlens.quantize.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
