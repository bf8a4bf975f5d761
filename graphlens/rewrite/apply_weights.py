"""Write processed weights into a graph's initializers, bypassing the norm affine ops folded away."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphlens.architectures.base import Architecture
from graphlens.rewrite.weights import Processing, process_params
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


def apply_processing(graph: gs.Graph, arch: Architecture, cfg: dict, processing: Processing) -> dict:
    """Process the graph's weights in place; returns the config after processing."""
    params = graph_params(graph)
    new_params, new_cfg = process_params(params, arch, cfg, processing)
    tensors = graph.tensors()
    for name, value in new_params.items():
        if name in tensors:
            tensors[name].values = value
        elif np.any(value):  # a bias HF lacks (zeros in TL's state dict) that processing made non-zero
            raise InputError(
                f"weight processing gives {name!r} non-zero values but the graph has no such parameter; "
                f"the {arch.name} adapter must list its module in zero_biases"
            )
    # params the adapter maps that processing dropped: the norms' weights and biases (fold_ln)
    removed = (set(arch.write_weights(arch.read_weights(params, cfg), cfg)) - set(new_params)) & set(tensors)
    for name in sorted(removed):
        _bypass_consumers_of(graph, tensors[name])
    graph.cleanup().toposort()
    return new_cfg

