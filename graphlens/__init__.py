"""graphlens: TransformerLens' hooks and API on ONNX Runtime."""

__version__ = "0.1.0"
