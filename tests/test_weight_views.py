"""``rewrite.weight_views``: a TransformerLens weight read in the graph as a strided view of the HF initializer,
against the adapters' own numpy layouts (``architectures.params``) run by ONNX Runtime on random arrays."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from graphlens.architectures.params import (CONV1D_QKV, CONV1D_QKV_BIAS, PER_HEAD_QKV, PER_HEAD_QKV_BIAS, QKV,
                                            QKV_BIASES, Param, ParamTable, bias_heads, linear_heads, scaled)
from graphlens.errors import NotSupportedError
from graphlens.rewrite.weight_views import trace_weights, view_in_graph

CFG = dict(n_layers=1, n_heads=4, n_key_value_heads=2, d_head=8, d_model=32)
H = "h.{layer}"
TABLES = {  # name → (rows, HF shapes)
    "gpt2 fused Conv1D": ((Param(f"{H}.c_attn.weight", QKV, CONV1D_QKV), Param(f"{H}.c_attn.bias", QKV_BIASES, CONV1D_QKV_BIAS)),
                          {"h.0.c_attn.weight": (32, 96), "h.0.c_attn.bias": (96,)}),
    "neox per-head fused": ((Param(f"{H}.qkv.weight", QKV, PER_HEAD_QKV), Param(f"{H}.qkv.bias", QKV_BIASES, PER_HEAD_QKV_BIAS)),
                            {"h.0.qkv.weight": (96, 32), "h.0.qkv.bias": (96,)}),
    "grouped k_proj": ((Param(f"{H}.k.weight", "blocks.{layer}.attn.W_K", linear_heads("n_key_value_heads")),
                        Param(f"{H}.k.bias", "blocks.{layer}.attn.b_K", bias_heads("n_key_value_heads"), missing="zeros")),
                       {"h.0.k.weight": (16, 32)}),
}


def _run_views(views: dict, params: dict) -> dict:
    graph = gs.Graph(opset=18)
    constants = {name: gs.Constant(name, value) for name, value in params.items()}
    for name, view in views.items():
        out = view_in_graph(graph, view, constants[view.init], name)
        out.shape = list(view.shape)
        graph.outputs.append(out)
    session = ort.InferenceSession(gs.export_onnx(graph.toposort()).SerializeToString())
    return dict(zip(views, session.run(None, {})))


@pytest.mark.parametrize("table", list(TABLES))
def test_views_equal_the_adapters_numpy_layouts(table):
    rows, shapes = TABLES[table]
    params = {name: np.random.default_rng(0).normal(size=shape).astype(np.float32) for name, shape in shapes.items()}
    read = ParamTable(rows).read
    expected = read(params, CFG, 0)
    views = trace_weights(read, shapes, CFG, 0, sorted(expected), table)
    present = {name: view for name, view in views.items() if view is not None}
    assert {name for name, value in expected.items() if value.any()} == set(present)  # absent bias: zeros, no view
    for name, value in _run_views(present, params).items():
        np.testing.assert_array_equal(value, expected[name])


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_layout_that_computes_values_is_refused(factor):
    read = ParamTable((Param(f"{H}.q.weight", "blocks.{layer}.attn.W_Q", scaled(lambda cfg: factor)),)).read
    with pytest.raises(NotSupportedError, match="toy: .*W_Q (is not a plain view|mixes)"):
        trace_weights(read, {"h.0.q.weight": (32, 32)}, CFG, 0, ["blocks.0.attn.W_Q"], "toy")
