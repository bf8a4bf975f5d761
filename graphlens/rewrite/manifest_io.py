"""What the manifest says about a graph: its inputs, outputs and hooks."""

from __future__ import annotations

from typing import Callable

import onnx

from graphlens.export_names import PATCH_SUFFIXES, input_name
from graphlens.sites import concrete_shape, kind_of, split_name


def _value_info(v: onnx.ValueInfoProto) -> dict:
    t = v.type.tensor_type
    shape = [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim]
    return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}


def graph_io(proto: onnx.ModelProto) -> dict:
    """The model's own inputs and outputs (hook outputs and substitution inputs are listed per hook)."""
    is_hook_io = lambda name: name.rsplit(".", 1)[-1] in PATCH_SUFFIXES or ".hook_" in name or name.startswith("hook_")
    return {
        "inputs": [_value_info(v) for v in proto.graph.input if not is_hook_io(v.name)],
        "outputs": [_value_info(v) for v in proto.graph.output if not is_hook_io(v.name)],
    }


def hook_entries(hooks: list[str], cfg: dict, dtype: str, with_inputs: Callable[[str], bool] = lambda name: True) -> list[dict]:
    """One manifest entry per hook; ``inputs`` lists its substitution inputs (empty when it has none)."""
    entries = []
    for name in hooks:
        layer, suffix = split_name(name)
        entries.append(
            {
                "name": name,
                "kind": suffix,
                "layer": layer,
                "shape": concrete_shape(kind_of(name).dims, cfg),
                "dtype": dtype,
                "inputs": {kind: input_name(name, kind) for kind in PATCH_SUFFIXES} if with_inputs(name) else {},
            }
        )
    return entries
