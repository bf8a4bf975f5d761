"""Specialise an instrumented graph for one request: only the outputs asked for, only the sites fed.

A site that is not fed loses its ``Where``/``Add`` (they become Identity, which ONNX Runtime
eliminates), its substitution inputs disappear, and every node the requested outputs do not need is
pruned. ``model(tokens)`` therefore runs the same graph as a plain export.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import onnx

from graphlens.export_names import input_name, is_substitution_input
from graphlens.errors import InputError

# What a request may feed at a site: "patch" (patch + patch_mask) and/or "add".
FEED_KINDS = ("patch", "add")


def _feed_inputs(hook: str, kinds: Iterable[str]) -> list[str]:
    names = []
    for kind in kinds:
        names += [input_name(hook, "patch"), input_name(hook, "patch_mask")] if kind == "patch" else [input_name(hook, "add")]
    return names


def substitution_nodes(graph: onnx.GraphProto, fed: Mapping[str, Iterable[str]]) -> list[onnx.NodeProto]:
    """The graph's nodes with each unfed site's ``Where``/``Add`` turned into Identity."""
    nodes = []
    for node in graph.node:
        hook, _, role = node.name.rpartition(".")
        if role in ("where", "add") and hook and (node.op_type in ("Where", "Add")):
            wanted = "patch" if role == "where" else "add"
            if wanted not in fed.get(hook, ()):
                passthrough = node.input[2] if role == "where" else node.input[0]
                node = onnx.helper.make_node("Identity", [passthrough], list(node.output), name=node.name)
        nodes.append(node)
    return nodes


def needed_nodes(
    nodes: list[onnx.NodeProto], outputs: Iterable[str], available: Iterable[str] = ()
) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes (in order) that ``outputs`` need, and every tensor name they read.

    Tensors in ``available`` are given from outside: their producers are not followed.
    """
    needed, available = set(outputs), set(available)
    kept = []
    for node in reversed(nodes):  # nodes are in topological order
        if any(o in needed and o not in available for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names too
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(i for n in attr.g.node for i in n.input)
    kept.reverse()
    return kept, needed


def empty_model_like(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.ir_version, out.producer_name, out.producer_version = model.ir_version, model.producer_name, model.producer_version
    out.opset_import.extend(model.opset_import)
    out.graph.name = model.graph.name
    return out


def specialise(
    model: onnx.ModelProto,
    outputs: Iterable[str],
    fed: Mapping[str, Iterable[str]] | None = None,
    keep_inputs: Iterable[str] = (),
) -> onnx.ModelProto:
    """A copy of ``model`` computing only ``outputs``, with substitution inputs only at ``fed`` sites.

    ``fed`` maps hook name → kinds from FEED_KINDS. Fed inputs have no default: they must be fed.
    """
    fed = {hook: set(kinds) for hook, kinds in (fed or {}).items()}
    outputs = list(dict.fromkeys(outputs))
    graph = model.graph
    out = empty_model_like(model)
    kept, needed = needed_nodes(substitution_nodes(graph, fed), outputs)

    fed_inputs = {name for hook, kinds in fed.items() for name in _feed_inputs(hook, kinds)}
    keep = set(keep_inputs)
    value_infos = {v.name: v for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    g = out.graph
    g.node.extend(kept)
    for inp in graph.input:
        if (inp.name in needed or inp.name in keep) and (not is_substitution_input(inp.name) or inp.name in fed_inputs):
            g.input.append(inp)
    g.initializer.extend(i for i in graph.initializer if i.name in needed and i.name not in fed_inputs)
    missing = [name for name in outputs if name not in value_infos]
    if missing:
        raise InputError(f"the graph has no outputs named {missing}")
    g.output.extend(value_infos[name] for name in outputs)
    return out
