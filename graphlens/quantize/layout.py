"""Linear layers in the layout ONNX Runtime's weight quantizers take: ``MatMul(x, W)`` with ``W`` an
``[in, out]`` initializer.

The torch exporter writes ``nn.Linear`` as ``MatMul(x, Transpose(W))`` (HF's ``[out, in]`` weight) and
GPT-2's ``Conv1D`` as ``Gemm(x, W, b)``; the quantizers only see a ``MatMul`` whose second input is an
initializer. ``in_out_layout`` folds each such Transpose into a new initializer (the transposed copy,
named ``<weight>.in_out``) and turns each Gemm into MatMul + Add, and returns which float weight each
quantizable initializer came from, so that dequantised weights can be given back under the HF name
and layout the architecture adapters read.

``fuse_shared_input`` then merges the linear layers that read one tensor (q/k/v, gate/up) into one
``MatMul`` on the concatenated weight followed by a ``Split`` that gives each original output its own
name back (so every hook and consumer is untouched): fewer, larger kernels per step, as GenAI's
fused q/k/v. Only for quantizations whose blocks lie within one output column (int4's MatMulNBits),
where the fused matrix quantizes to exactly the blocks of its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

IN_OUT_SUFFIX = ".in_out"


@dataclass(frozen=True)
class LinearWeight:
    """A quantizable ``[in, out]`` initializer: the float weight it is, as the bundle named it."""

    name: str  # the initializer the MatMul reads
    source: str  # the float weight's name in the unquantized bundle (the HF parameter)
    transposed: bool  # source is [out, in] (nn.Linear): the initializer is its transpose
    columns: tuple[int, int] | None = None  # in a fused initializer: the output columns [start, stop) it fills


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def in_out_layout(proto: onnx.ModelProto) -> list[LinearWeight]:
    """Rewrite ``proto`` in place so every linear layer is ``MatMul(x, W[in, out])``; returns those weights.

    Only 2-D initializers that are not graph inputs (not overridable) count; other MatMuls (attention's
    activation products) are left as they are.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    fixed = {i.name for i in graph.input}
    producer = {out: node for node in graph.node for out in node.output}

    def constant_2d(name: str) -> bool:
        return name in inits and name not in fixed and len(inits[name].dims) == 2

    weights: dict[str, LinearWeight] = {}

    def transposed_copy(source: str) -> str:
        name = source + IN_OUT_SUFFIX
        if name not in inits:
            value = np.ascontiguousarray(numpy_helper.to_array(inits[source]).T)
            inits[name] = numpy_helper.from_array(value, name)
            graph.initializer.append(inits[name])
        weights[name] = LinearWeight(name, source, True)
        return name

    nodes, bypassed = [], set()
    for node in graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            b = node.input[1]
            if constant_2d(b):
                weights[b] = LinearWeight(b, b, False)
            elif b in producer and producer[b].op_type == "Transpose":
                source = producer[b].input[0]
                perm = _attrs(producer[b]).get("perm", [1, 0])
                if constant_2d(source) and list(perm) == [1, 0]:
                    node.input[1] = transposed_copy(source)
                    bypassed.add(producer[b].output[0])
            nodes.append(node)
        elif node.op_type == "Gemm" and constant_2d(node.input[1]) and _gemm_is_matmul(node):
            b = node.input[1]
            b = transposed_copy(b) if _attrs(node).get("transB", 0) else b
            if b not in weights:
                weights[b] = LinearWeight(b, b, False)
            out = node.output[0]
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            product = out + "/matmul" if bias else out
            nodes.append(helper.make_node("MatMul", [node.input[0], b], [product], name=node.name + "/matmul"))
            if bias:
                nodes.append(helper.make_node("Add", [product, bias], [out], name=node.name + "/bias"))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph, bypassed)
    return list(weights.values())


def _gemm_is_matmul(node: onnx.NodeProto) -> bool:
    a = _attrs(node)
    return not a.get("transA", 0) and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0


def _drop_unused(graph: onnx.GraphProto, bypassed: set[str]) -> None:
    """Remove the Transposes whose outputs (``bypassed``) nothing reads any more, then unread initializers."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [n for n in graph.node if not (n.op_type == "Transpose" and n.output[0] in bypassed and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(kept)
    read = {name for node in graph.node for name in node.input} | {i.name for i in graph.input}
    kept_inits = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)


FUSED_SUFFIX = ".fused"


def fuse_shared_input(proto: onnx.ModelProto, weights: list[LinearWeight]) -> list[LinearWeight]:
    """Merge the ``MatMul``s of ``weights`` that read the same input into one MatMul + Split (in place);
    returns the weights with each fused part's ``columns`` in the merged initializer."""
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {w.name: w for w in weights}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in by_name:
            groups.setdefault(node.input[0], []).append(node)
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    replaced: dict[int, list[onnx.NodeProto]] = {}
    result = {w.name: w for w in weights}
    for source, nodes in groups.items():
        names = [n.input[1] for n in nodes]
        if len(nodes) < 2 or len(set(names)) < len(names) or any(readers[name] > 1 for name in names):
            continue
        parts = [numpy_helper.to_array(inits[name]) for name in names]
        if len({(p.shape[0], p.dtype) for p in parts}) != 1:
            continue
        fused = names[0] + FUSED_SUFFIX
        graph.initializer.append(numpy_helper.from_array(np.concatenate(parts, axis=1), fused))
        widths = [p.shape[1] for p in parts]
        product = nodes[0].output[0] + FUSED_SUFFIX
        matmul = helper.make_node("MatMul", [source, fused], [product], name=nodes[0].name + FUSED_SUFFIX)
        split = helper.make_node("Split", [product, _int64s(graph, fused + ".split", widths)],
                                 [n.output[0] for n in nodes], axis=-1, name=nodes[0].name + FUSED_SUFFIX + "/split")
        replaced[id(nodes[0])] = [matmul, split]
        for node in nodes[1:]:
            replaced[id(node)] = []
        start = 0
        for name, width in zip(names, widths):
            del result[name]
            result[f"{fused}:{start}"] = LinearWeight(fused, by_name[name].source, by_name[name].transposed,
                                                      (start, start + width))
            start += width
    if replaced:
        nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused(graph, set())
    return list(result.values())


def _int64s(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name
