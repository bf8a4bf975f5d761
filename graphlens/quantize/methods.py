"""The two weight quantizations, both ONNX Runtime's own (``onnxruntime.quantization``).

- ``int4``: ``MatMulNBitsQuantizer``, block-wise along the input axis, block size 32, **symmetric**
  (no zero points: each stored nibble is ``q + 8``), ``accuracy_level`` 4 (the activation is quantized
  to int8 inside the kernel, as GenAI's CPU int4 models do) — the settings of onnxruntime-genai's
  model builder with ``-p int4 -e cpu``. Linear layers reading one tensor (q/k/v, gate/up) become one
  ``MatMulNBits`` node and a ``Split``; the others one ``MatMulNBits`` each.
- ``int8``: dynamic quantization (``quantize_dynamic``, signed int8 weights, per tensor): each linear
  layer becomes ``DynamicQuantizeLinear`` (the activation, at run time) → ``MatMulInteger`` → ``Cast`` →
  ``Mul`` by the two scales.

Only linear layers' weights change; every graph output (each hook) and every substitution input stays
float. ``quantize_graph`` returns, per quantized weight, the initializers that hold it (data the
manifest records and ``dequantise`` reads).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from graphlens.errors import InputError, NotSupportedError
from graphlens.quantize.layout import LinearWeight, fuse_shared_input, in_out_layout

METHODS = ("int4", "int8")
INT4_BLOCK_SIZE = 32
INT4_ACCURACY_LEVEL = 4


@dataclass(frozen=True)
class Settings:
    """What a quantized bundle's manifest records under ``quantization`` (less the per-weight list)."""

    method: str
    bits: int
    block_size: int | None
    symmetric: bool
    accuracy_level: int | None
    ops: tuple[str, ...]
    tool: str

    def as_dict(self) -> dict:
        return {"method": self.method, "bits": self.bits, "block_size": self.block_size, "symmetric": self.symmetric,
                "accuracy_level": self.accuracy_level, "ops": list(self.ops), "tool": self.tool}


def settings_for(method: str, block_size: int = INT4_BLOCK_SIZE, accuracy_level: int = INT4_ACCURACY_LEVEL) -> Settings:
    import onnxruntime

    tool = f"onnxruntime.quantization {onnxruntime.__version__}"
    if method == "int4":
        if block_size < 16 or block_size & (block_size - 1):
            raise InputError(f"block_size must be a power of two ≥ 16 (MatMulNBits); got {block_size}")
        if accuracy_level not in (0, 1, 2, 3, 4):
            raise InputError(f"accuracy_level must be 0..4 (MatMulNBits); got {accuracy_level}")
        return Settings("int4", 4, block_size, True, accuracy_level, ("MatMulNBits",), f"{tool}: MatMulNBitsQuantizer")
    if method == "int8":
        return Settings("int8", 8, None, True, None, ("DynamicQuantizeLinear", "MatMulInteger"), f"{tool}: quantize_dynamic")
    raise InputError(f"quantize must be one of {', '.join(METHODS)}; got {method!r}")


def quantize_graph(proto: onnx.ModelProto, settings: Settings) -> tuple[onnx.ModelProto, list[dict]]:
    """``proto`` (weights loaded) with its linear layers quantized, and one record per quantized weight:
    ``name`` (the float weight, HF name), ``transposed``, ``op``, and the initializers holding it."""
    layers = in_out_layout(proto)
    if settings.method == "int4":  # blocks within one output column: fusing q/k/v (gate/up) is exact
        layers = fuse_shared_input(proto, layers)
    linear: dict[str, list[LinearWeight]] = {}
    for weight in layers:
        linear.setdefault(weight.name, []).append(weight)
    if not linear:
        raise NotSupportedError("the graph has no linear layer with a constant weight to quantize")
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization")]  # the quantizers log to root
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        out = _int4(proto, settings) if settings.method == "int4" else _int8(proto, linear)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return out, _records(out, linear, settings)


def _int4(proto: onnx.ModelProto, settings: Settings) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(proto, bits=4, block_size=settings.block_size, is_symmetric=True,
                                     accuracy_level=settings.accuracy_level or None, op_types_to_quantize=("MatMul",))
    quantizer.process()
    return quantizer.model.model


def _int8(proto: onnx.ModelProto, linear: dict[str, list[LinearWeight]]) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in linear]
    with tempfile.TemporaryDirectory(prefix="graphlens-int8-") as tmp:
        path = Path(tmp) / "model.onnx"
        quantize_dynamic(proto, path, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        return onnx.load(str(path))


def _records(proto: onnx.ModelProto, linear: dict[str, list[LinearWeight]], settings: Settings) -> list[dict]:
    inits = {i.name for i in proto.graph.initializer}
    records = []
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            stored = {"op": "MatMulNBits", "quantized": node.input[1], "scales": node.input[2],
                      "zero_points": node.input[3] if len(node.input) > 3 and node.input[3] else None,
                      "shape": [attrs["K"], attrs["N"]], "block_size": attrs["block_size"]}
            parts = linear[node.input[1].removesuffix(f"_Q{settings.bits}")]
        elif node.op_type == "MatMulInteger" and node.input[1] in inits:
            parts = linear[node.input[1].removesuffix("_quantized")]
            scale = parts[0].name + "_scale"
            if scale not in inits:
                raise NotSupportedError(f"quantize_dynamic stored {parts[0].name}'s scale under an unexpected name")
            stored = {"op": "MatMulInteger", "quantized": node.input[1], "scales": scale,
                      "zero_points": node.input[3] if len(node.input) > 3 and node.input[3] else None,
                      "shape": None, "block_size": None}
        else:
            continue
        for weight in parts:
            records.append({"name": weight.source, "transposed": weight.transposed, **stored,
                            "columns": list(weight.columns) if weight.columns else None})
    return records
