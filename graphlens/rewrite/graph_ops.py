"""Small onnx-graphsurgeon building blocks shared by the graph rewrites that add sites."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphlens.rewrite.instrument import MARKER_DOMAIN, MARKER_OP


def only_consumer(tensor: gs.Variable) -> gs.Node | None:
    consumers = list(tensor.outputs)
    return consumers[0] if len(consumers) == 1 else None


def is_weight(tensor) -> bool:
    """A tensor computed from initializers only (a Constant, or a Transpose/Cast of one)."""
    if isinstance(tensor, gs.Constant):
        return True
    return len(tensor.inputs) == 1 and all(is_weight(t) for t in tensor.inputs[0].inputs)


def int64_const(name: str, values) -> gs.Constant:
    return gs.Constant(name, np.asarray(values, dtype=np.int64))


def add_node(graph: gs.Graph, op: str, inputs: list, name: str, dtype=None, **attrs) -> gs.Variable:
    out = gs.Variable(name, dtype=dtype)
    graph.nodes.append(gs.Node(op, name=f"{name}.node", inputs=inputs, outputs=[out], attrs=attrs))
    return out


def add_marker(graph: gs.Graph, x: gs.Variable, site: str) -> gs.Variable:
    out = gs.Variable(f"{site}.marked", dtype=x.dtype)
    graph.nodes.append(gs.Node(MARKER_OP, name=f"{site}.marker", domain=MARKER_DOMAIN, attrs={"name": site},
                               inputs=[x], outputs=[out]))
    return out


def rewire(old: gs.Variable, new: gs.Variable, skip=()) -> None:
    for consumer in list(old.outputs):
        if consumer in skip:
            continue
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new
