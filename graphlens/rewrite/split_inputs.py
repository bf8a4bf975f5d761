"""``use_split_qkv_input`` / ``use_attn_in``: the attention's input copied per head, as a graph rewrite.

TransformerLens' block with these flags (``transformer_block.py``): the residual stream is repeated along
a head axis — ``hook_attn_in`` ``[batch, pos, n_heads, d_model]``, or ``hook_q_input`` (n_heads) and
``hook_k_input``/``hook_v_input`` (n_key_value_heads) — ln1 is applied to each copy, and each head's
projection reads its own copy (``einsum("bphd,hde->bphe", x, W_Q) + b_Q``). This module does the same to a
bundle graph in block ``layer``:

- the new input sites are ``Expand``s of ``hook_resid_pre``;
- ln1 is written out per copy (TransformerLens' LayerNorm/RMSNorm arithmetic, as the export's norm) and
  followed by the graph's own norm weight/bias ops; TransformerLens calls ln1 once per q, k, v input and its
  cache keeps the last call, so ``ln1.hook_scale``/``ln1.hook_normalized`` are the value input's norm
  (with its head axis); a hook or patch on them reaches the values' input only;
- ``W_Q``/``W_K``/``W_V`` (and biases) are strided views of the HF initializers (``weight_views``), and the
  per-head products replace what ``attn.hook_q``/``hook_k``/``hook_v`` read, so everything after them
  (rotary, scores, the KV cache) is the exported graph's.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphlens.architectures.base import Architecture
from graphlens.errors import NotSupportedError
from graphlens.rewrite.graph_ops import add_marker, add_node, int64_const, is_weight, only_consumer, rewire
from graphlens.rewrite.weight_views import trace_weights, view_in_graph

_ELEMENTWISE = ("Mul", "Add", "Sub", "Div", "Cast")


def _site_parts(graph: gs.Graph, name: str) -> tuple[gs.Node, int]:
    """The node that reads the site ``name``'s activation (its Where, or the Identity of a site without inputs)."""
    node = next((n for n in graph.nodes if n.name == f"{name}.where"), None)
    if node is None:
        raise NotSupportedError(f"{name}: not an instrumented site of this graph")
    return node, 2 if node.op == "Where" else 0


def _unhook(graph: gs.Graph, name: str) -> None:
    """Drop site ``name``: its readers get the raw activation again, and it is no graph output any more."""
    node, slot = _site_parts(graph, name)
    hooked = graph.tensors()[name]
    rewire(hooked, node.inputs[slot])
    graph.outputs = [t for t in graph.outputs if t is not hooked]
    for old in (node, *hooked.inputs):  # its Where/Add (or Identity), so that the new site may take its names
        old.inputs.clear()
        old.outputs.clear()


def _norm_tail(normalized: gs.Variable) -> list[gs.Node]:
    """The norm's weight/bias ops after ``hook_normalized`` (elementwise with a weight), up to what attention reads."""
    tail, tensor = [], normalized
    while (node := only_consumer(tensor)) is not None and node.op in _ELEMENTWISE:
        others = [t for t in node.inputs if t is not tensor]
        if not all(is_weight(t) for t in others):
            break
        tail.append(node)
        tensor = node.outputs[0]
    return tail


def _apply_tail(graph: gs.Graph, tail: list[gs.Node], x: gs.Variable, name: str) -> gs.Variable:
    """``tail`` (a chain of elementwise nodes) applied again, to ``x``."""
    for i, node in enumerate(tail):
        chain = next(t for t in node.inputs if not is_weight(t))
        inputs = [x if t is chain else t for t in node.inputs]
        x = add_node(graph, node.op, inputs, f"{name}.tail{i}", x.dtype, **dict(node.attrs))
    return x


def _repeat(graph: gs.Graph, resid: gs.Variable, heads: int, name: str) -> gs.Variable:
    """``resid [batch, pos, d_model]`` → ``[batch, pos, heads, d_model]`` (TL's repeat_along_head_dimension)."""
    one_head = add_node(graph, "Unsqueeze", [resid, int64_const(f"{name}.head_axis", [2])], f"{name}.one_head", resid.dtype)
    return add_node(graph, "Expand", [one_head, int64_const(f"{name}.heads", [1, 1, heads, 1])], f"{name}.repeat", resid.dtype)


def _norm(graph: gs.Graph, x: gs.Variable, cfg: dict, name: str, site: str | None) -> tuple[gs.Variable, gs.Variable]:
    """TransformerLens' norm of ``x`` over its last axis: ``(scale, normalized)``, marked as ``site``'s when given."""
    dtype = x.dtype
    last = int64_const(f"{name}.last_axis", [-1])
    if cfg["normalization_type"] in ("LN", "LNPre"):
        x = add_node(graph, "Sub", [x, add_node(graph, "ReduceMean", [x, last], f"{name}.mean", dtype)], f"{name}.centred", dtype)
    square = add_node(graph, "Mul", [x, x], f"{name}.square", dtype)
    eps = gs.Constant(f"{name}.eps", np.asarray(cfg["eps"], dtype=dtype))
    variance = add_node(graph, "Add", [add_node(graph, "ReduceMean", [square, last], f"{name}.mean_square", dtype), eps],
                     f"{name}.variance", dtype)
    scale = add_node(graph, "Sqrt", [variance], f"{name}.scale", dtype)
    if site:
        scale = add_marker(graph, scale, f"{site}.hook_scale")
    normalized = add_node(graph, "Div", [x, scale], f"{name}.normalized", dtype)
    if site:
        normalized = add_marker(graph, normalized, f"{site}.hook_normalized")
    return scale, normalized


def _per_head(graph: gs.Graph, x: gs.Variable, weight: gs.Variable, bias: gs.Variable | None, name: str) -> gs.Variable:
    """``einsum("bphd,hde->bphe", x, weight) + bias`` as Transpose → batched MatMul → Transpose."""
    dtype = x.dtype
    heads_first = add_node(graph, "Transpose", [x], f"{name}.heads_first", dtype, perm=[0, 2, 1, 3])
    product = add_node(graph, "MatMul", [heads_first, weight], f"{name}.product", dtype)  # [b, h, p, d_head]
    out = add_node(graph, "Transpose", [product], f"{name}.per_head", dtype, perm=[0, 2, 1, 3])
    return add_node(graph, "Add", [out, bias], f"{name}.plus_bias", dtype) if bias is not None else out


def split_attention_input(graph: gs.Graph, layer: int, cfg: dict, arch: Architecture) -> None:
    """Give block ``layer`` the per-head attention inputs of ``cfg``'s use_split_qkv_input / use_attn_in."""
    block = f"blocks.{layer}"
    family = arch.name
    tensors = graph.tensors()
    resid = tensors[f"{block}.hook_resid_pre"]
    normalized = tensors.get(f"{block}.ln1.hook_normalized")
    if normalized is None:
        raise NotSupportedError(f"{family}: block {layer} has no ln1 before attention, so TransformerLens' per-head "
                                "attention input has no norm to split")
    tail = _norm_tail(normalized)
    names = [f"{block}.attn.{w}_{p}" for p in "QKV" for w in ("W", "b")]
    shapes = {t.name: tuple(t.shape) for t in tensors.values() if isinstance(t, gs.Constant)}
    views = trace_weights(arch.read_weights, shapes, cfg, layer, names, family)
    for name in (f"{block}.ln1.hook_scale", f"{block}.ln1.hook_normalized"):
        _unhook(graph, name)
    n_heads, n_kv = cfg["n_heads"], cfg.get("n_key_value_heads") or cfg["n_heads"]
    if cfg.get("use_attn_in"):
        attn_in = add_marker(graph, _repeat(graph, resid, n_heads, f"{block}.hook_attn_in"), f"{block}.hook_attn_in")
    if cfg.get("use_split_qkv_input"):  # TransformerLens: attn_in (if any) is then computed but not read
        inputs = {p: add_marker(graph, _repeat(graph, resid, heads, f"{block}.hook_{p}_input"), f"{block}.hook_{p}_input")
                  for p, heads in (("q", n_heads), ("k", n_kv), ("v", n_kv))}
        normed = {p: _norm(graph, x, cfg, f"{block}.ln1_{p}", f"{block}.ln1" if p == "v" else None)[1]
                  for p, x in inputs.items()}
    else:
        shared = _norm(graph, attn_in, cfg, f"{block}.ln1_in", f"{block}.ln1")[1]
        normed = dict.fromkeys("qkv", shared)
    tails: dict[int, gs.Variable] = {}
    for p in "qkv":
        site = f"{block}.attn.hook_{p}"
        w_view, b_view = views[f"{block}.attn.W_{p.upper()}"], views[f"{block}.attn.b_{p.upper()}"]
        if w_view is None:
            raise NotSupportedError(f"{family}: W_{p.upper()} of block {layer} not found among the graph's weights")
        weight = view_in_graph(graph, w_view, tensors[w_view.init], f"{site}.W")
        bias = view_in_graph(graph, b_view, tensors[b_view.init], f"{site}.b") if b_view is not None else None
        if id(normed[p]) not in tails:
            tails[id(normed[p])] = _apply_tail(graph, tail, normed[p], f"{block}.ln1_{p}")
        x = tails[id(normed[p])]
        node, slot = _site_parts(graph, site)
        node.inputs[slot] = _per_head(graph, x, weight, bias, site)
