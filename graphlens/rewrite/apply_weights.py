"""Write processed weights into a graph's initializers, bypassing the norm affine ops folded away."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphlens.architectures.base import Architecture
from graphlens.rewrite.weights import Processing, process_stream
from graphlens.errors import InputError


def graph_params(graph: gs.Graph) -> dict[str, np.ndarray]:
    """The graph's initializers by name (views, no copies)."""
    return {name: t.values for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}


def _bypass_consumers_of(graph: gs.Graph, constant: gs.Constant) -> None:
    """Remove each elementwise node that applies ``constant`` (x*w or x+b): its output becomes x."""
    for node in list(constant.outputs):
        (other,) = [t for t in node.inputs if t is not constant]
        out = node.outputs[0]
        for consumer in list(out.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is out:
                    consumer.inputs[i] = other
        node.inputs.clear()
        if out in graph.outputs:  # keep the output's name: alias it through an Identity
            node.op = "Identity"
            node.inputs.append(other)
        else:
            node.outputs.clear()


def bypass_removed(graph: gs.Graph, removed: set[str]) -> None:
    """Take the params processing removed (folded norms) out of ``graph``, bypassing the ops that applied them."""
    tensors = graph.tensors()
    for name in sorted(removed & set(tensors)):
        _bypass_consumers_of(graph, tensors[name])
    graph.cleanup().toposort()


def missing_param_error(name: str, arch: Architecture) -> InputError:
    """A bias HF lacks (zeros in TL's state dict) that processing made non-zero, with nowhere to go."""
    return InputError(
        f"weight processing gives {name!r} non-zero values but the graph has no such parameter; "
        f"the {arch.name} adapter must list its module in zero_biases"
    )


def apply_processing(graph: gs.Graph, arch: Architecture, cfg: dict, processing: Processing) -> dict:
    """Process the graph's weights in place; returns the config after processing."""
    tensors = graph.tensors()

    def store(name: str, value: np.ndarray) -> None:
        if name in tensors:
            tensors[name].values = value
        elif np.any(value):
            raise missing_param_error(name, arch)

    new_cfg, removed = process_stream(graph_params(graph), arch, cfg, processing, store)
    bypass_removed(graph, removed)
    return new_cfg
