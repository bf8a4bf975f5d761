"""What the manifest says about a graph: its inputs, outputs and hooks, read from the graph itself.

Every graph input that a consumer may leave unfed carries a ``default`` (its initializer's value)
and ``required: false``; an input with no initializer has ``required: true``. The schema
(``graphlens/schema/graphlens.schema.json``) defines these fields.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import numpy_helper

from graphlens.export_names import PATCH_SUFFIXES, input_name
from graphlens.sites import concrete_shape, kind_of, split_name

_SUM = re.compile(r"^\s*(\w+)\s*\+\s*(\w+)\s*$")


def dim_label(label: str) -> str:
    """One spelling of a symbolic sum: ``"pos + past"``, ``"past+pos"`` → ``"past + pos"``."""
    match = _SUM.match(label)
    if match is None:
        return label
    a, b = match.groups()
    return f"{b} + {a}" if (a, b) == ("pos", "past") else f"{a} + {b}"


def normalise_dim_labels(proto: onnx.ModelProto) -> None:
    """Rewrite (in place) the symbolic dims of the graph's inputs and outputs to one spelling."""
    for v in list(proto.graph.input) + list(proto.graph.output):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = dim_label(d.dim_param)


def _default(init: onnx.TensorProto) -> dict:
    """An initializer as a manifest default: ``{"shape", "fill"}`` when uniform, else ``{"shape", "values"}``."""
    value = numpy_helper.to_array(init)
    flat = value.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return {"shape": list(value.shape), "fill": flat[0].item()}
    return {"shape": list(value.shape), "values": flat.tolist()}


def _value_info(v: onnx.ValueInfoProto, inputs: _Inputs | None = None) -> dict:
    t = v.type.tensor_type
    shape = [dim_label(d.dim_param) if d.dim_param else d.dim_value for d in t.shape.dim]
    entry = {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}
    if inputs is not None:  # graph inputs: whether a consumer must feed it, and what "no intervention" is
        entry["required"] = v.name not in inputs.initialized
        if v.name in inputs.defaults:
            entry["default"] = inputs.defaults[v.name]
    return entry


class _Inputs:
    """A graph's inputs that hold a value unfed, and the defaults to list (the graph's own, plus ``extra``)."""

    def __init__(self, proto: onnx.ModelProto, extra: dict[str, dict] | None = None):
        self.initialized = {i.name for i in proto.graph.initializer}
        self.defaults = {**input_defaults(proto), **(extra or {})}


def input_defaults(proto: onnx.ModelProto) -> dict[str, dict]:
    """Every overridable initializer (a graph input with an initializer) → its manifest default."""
    inputs = {i.name for i in proto.graph.input}
    return {i.name: _default(i) for i in proto.graph.initializer if i.name in inputs}


def _is_hook_io(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in PATCH_SUFFIXES or ".hook_" in name or name.startswith("hook_")


def graph_io(proto: onnx.ModelProto, defaults: dict[str, dict] | None = None) -> dict:
    """The model's own inputs and outputs (hook outputs and substitution inputs are listed per hook).

    ``defaults``: "no intervention" values of required inputs that had one in the graph they came from.
    """
    inputs = _Inputs(proto, defaults)
    return {
        "inputs": [_value_info(v, inputs) for v in proto.graph.input if not _is_hook_io(v.name)],
        "outputs": [_value_info(v) for v in proto.graph.output if not _is_hook_io(v.name)],
    }


def hook_entries(
    hooks: list[str], cfg: dict, dtype: str, graph: onnx.ModelProto, defaults: dict[str, dict] | None = None
) -> list[dict]:
    """One manifest entry per hook, its substitution inputs as ``graph`` has them.

    ``inputs``: kind → input name; ``substitution_inputs``: kind → name, dtype, rank, required and
    default (both empty when the site has none in ``graph``); ``defaults`` as in ``graph_io``.
    """
    inputs = _Inputs(graph, defaults)
    graph_inputs = {v.name: v for v in graph.graph.input}
    entries = []
    for name in hooks:
        layer, suffix = split_name(name)
        substitution = {}
        for kind in PATCH_SUFFIXES:
            v = graph_inputs.get(input_name(name, kind))
            if v is not None:
                info = _value_info(v, inputs)
                substitution[kind] = {"name": info["name"], "dtype": info["dtype"], "rank": len(info["shape"]),
                                      "required": info["required"], **({"default": info["default"]} if "default" in info else {})}
        entries.append(
            {
                "name": name,
                "kind": suffix,
                "layer": layer,
                "shape": concrete_shape(kind_of(name).dims, cfg),
                "dtype": dtype,
                "inputs": {kind: s["name"] for kind, s in substitution.items()},
                "substitution_inputs": substitution,
            }
        )
    return entries
