"""Defaults for the full graph's ``attention_mask`` and ``position_ids`` inputs: a plain ``input_ids`` feed still runs.

The export traces both as ``[batch, pos]`` tensors. This rewrite makes them *overridable
initializers* (unfed, their default is used) and inserts, in front of the graph::

    mask      = Expand(attention_mask, Shape(input_ids))           default [[1]]: nothing is padding
    derived   = Max(CumSum(mask, axis=1) - 1, 0)                   TransformerLens' get_offset_position_ids
    positions = Where(position_ids < 0, derived, position_ids)     default [[-1]]: derived from the mask

so feeding only ``attention_mask`` (0 = padding) gives TransformerLens' left-padding semantics, and
feeding ``position_ids`` too overrides the positions.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphlens.errors import ExportError

ATTENTION_MASK, POSITION_IDS = "attention_mask", "position_ids"
# name → (default value, meaning), as the manifest lists them
DEFAULTS = {
    ATTENTION_MASK: (1, "1 = real token, 0 = padding (never attended; zero positional embedding)"),
    POSITION_IDS: (-1, "a negative entry means cumsum(attention_mask) - 1, clipped at 0 (TransformerLens' offset positions)"),
}
_PREFIX = "graphlens.inputs"


def with_mask_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give ``model``'s ``attention_mask`` / ``position_ids`` inputs their defaults (in place; returns it)."""
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    if ATTENTION_MASK not in inputs or POSITION_IDS not in inputs:
        raise ExportError("the graph has no attention_mask / position_ids inputs to give defaults to")
    inner = {name: f"{_PREFIX}.{name}" for name in DEFAULTS}
    for node in graph.node:
        node.input[:] = [inner.get(name, name) for name in node.input]
    for name in DEFAULTS:
        # Symbols of their own: the [1, 1] default is not [batch, pos], and ONNX Runtime's memory planner
        # trusts equal symbols (it re-used a [1, 1] buffer for a [batch, pos] tensor in Llama graphs).
        dims = inputs[name].type.tensor_type.shape.dim
        dims[0].dim_param, dims[1].dim_param = f"{name}_batch", f"{name}_pos"
    p = lambda name: f"{_PREFIX}.{name}"  # noqa: E731
    consts = {p("one"): np.array(1, np.int64), p("zero"): np.array(0, np.int64), p("axis"): np.array(1, np.int64)}
    nodes = [
        helper.make_node("Shape", ["input_ids"], [p("shape")], name=p("shape")),
        helper.make_node("Expand", [ATTENTION_MASK, p("shape")], [inner[ATTENTION_MASK]], name=p("mask")),
        helper.make_node("CumSum", [inner[ATTENTION_MASK], p("axis")], [p("cumsum")], name=p("cumsum")),
        helper.make_node("Sub", [p("cumsum"), p("one")], [p("counted")], name=p("counted")),
        helper.make_node("Max", [p("counted"), p("zero")], [p("derived")], name=p("derived")),
        helper.make_node("Less", [POSITION_IDS, p("zero")], [p("unfed")], name=p("unfed")),
        helper.make_node("Expand", [POSITION_IDS, p("shape")], [p("given")], name=p("given")),
        helper.make_node("Where", [p("unfed"), p("derived"), p("given")], [inner[POSITION_IDS]], name=p("positions")),
    ]
    # what the graph reads is [batch, pos], as input_ids (the sweep's cuts rely on its leading batch axis)
    graph.value_info.extend(helper.make_tensor_value_info(inner[name], onnx.TensorProto.INT64, ["batch", "pos"])
                            for name in DEFAULTS)
    graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in consts.items())
    graph.initializer.extend(numpy_helper.from_array(np.full((1, 1), DEFAULTS[n][0], np.int64), n) for n in DEFAULTS)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    return model


def manifest_defaults(inputs: list[dict]) -> list[dict]:
    """The manifest's ``inputs`` entries with each defaulted input's ``required: false``, ``default``
    (``{"shape": [1, 1], "fill": value}``, the form format 2 gives every overridable initializer) and
    ``meaning`` added; their shape is ``[batch, pos]`` as ``input_ids`` (or broadcastable to it), whatever
    symbols the graph declares."""
    out = []
    for entry in inputs:
        if entry["name"] in DEFAULTS:
            value, meaning = DEFAULTS[entry["name"]]
            entry = {**entry, "shape": ["batch", "pos"], "required": False, "default": {"shape": [1, 1], "fill": value},
                     "meaning": meaning}
        out.append(entry)
    return out
