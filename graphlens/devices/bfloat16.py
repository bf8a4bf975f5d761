"""bfloat16 bundles at run time: the weights stay bfloat16 on disk, the graph computes in float32.

ONNX Runtime's CPU provider has no bfloat16 kernels (``MatMul``, ``Expand``, …) and numpy has no
bfloat16 of its own, so a bfloat16 bundle is widened when it is loaded: every bfloat16 weight becomes
float32 (exact: bfloat16 is float32's upper half), every bfloat16 tensor type, ``Cast`` target and
constant of the graph becomes float32, and the activations, hooks and logits come back as float32 numpy
arrays. The numbers are those of float32 arithmetic on bfloat16 weights: closer to the float32 model
than HF's bfloat16 arithmetic is (``tests/test_scale.py`` measures the gap to HF in bfloat16).
"""

from __future__ import annotations

from typing import MutableMapping

import numpy as np
import onnx
from onnx import numpy_helper

BF16, F32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT


def has_bfloat16(proto: onnx.ModelProto) -> bool:
    graph = proto.graph
    return any(i.data_type == BF16 for i in graph.initializer) or any(
        v.type.tensor_type.elem_type == BF16 for v in [*graph.input, *graph.output])


def widen_bfloat16(proto: onnx.ModelProto, weights: MutableMapping[str, np.ndarray]) -> None:
    """Make ``proto`` compute in float32: ``weights`` (arrays held beside it, by initializer name) and
    its inline bfloat16 initializers widened, every bfloat16 type, cast and constant made float32."""
    for init in proto.graph.initializer:
        if init.data_type != BF16:
            continue
        if init.name in weights:
            weights[init.name] = np.asarray(weights[init.name]).astype(np.float32)
            init.data_type = F32
        else:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    _widen_graph(proto.graph)


def _widen_graph(graph: onnx.GraphProto) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.tensor_type.elem_type == BF16:
            value.type.tensor_type.elem_type = F32
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == BF16:
                attr.i = F32
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == BF16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _widen_graph(sub)
