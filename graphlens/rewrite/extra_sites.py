"""Sites TransformerLens adds only when asked (``set_use_attn_result``, ``set_use_hook_mlp_in``, and through
``split_inputs`` ``set_use_split_qkv_input``/``set_use_attn_in``), as a graph rewrite.

Applied to a loaded bundle's graphs when the flag is set (and undone by restoring the graph when it is
unset), so a model without the flag runs exactly the exported graph.

- ``blocks.L.attn.hook_result`` ``[batch, pos, n_heads, d_model]``: the attention output projection is
  rewritten as TransformerLens computes it with ``use_attn_result``: each head's ``z @ W_O[h]``, summed
  over heads, plus ``b_O``. ``W_O`` is the output projection's own initializer, reshaped in the graph
  (no copy), so weight processing stays in one place.
- ``blocks.L.hook_mlp_in`` ``[batch, pos, d_model]``: the MLP norm's input (the residual stream before
  it), a site of its own, so a patch there changes the MLP's input and not the residual stream.

Each new site becomes a ``graphlens.Site`` marker that ``rewrite.instrument.instrument_sites`` turns into
a hook output with ``.patch``/``.patch_mask``/``.add`` inputs, like every exported site.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graphlens.architectures.base import Architecture
from graphlens.errors import UnsupportedArchitectureError
from graphlens.rewrite.graph_ops import add_marker, add_node, int64_const, is_weight, only_consumer, rewire
from graphlens.rewrite.instrument import instrumented_model
from graphlens.rewrite.split_inputs import split_attention_input

_PASS_THROUGH = ("Identity", "Reshape")


def _follow(tensor: gs.Variable) -> gs.Variable:
    """The last tensor of a chain of single-consumer Identity/Reshape nodes starting at ``tensor``."""
    node = only_consumer(tensor)
    while node is not None and node.op in _PASS_THROUGH and node.inputs[0] is tensor:
        tensor = node.outputs[0]
        node = only_consumer(tensor)
    return tensor


def _output_projection(graph: gs.Graph, z: gs.Variable, name: str):
    """``(W [in, out] tensor, bias tensor or None, the projection's [batch, pos, d_model] output)`` after ``z``."""
    merged = _follow(z)
    linear = only_consumer(merged)
    if linear is None or linear.op not in ("Gemm", "MatMul") or linear.inputs[0] is not merged:
        raise UnsupportedArchitectureError(f"{name}: no output projection (MatMul/Gemm) found after hook_z; this graph cannot "
                          "expose attn.hook_result")
    weight, bias = linear.inputs[1], None
    if linear.op == "Gemm":
        if linear.attrs.get("transA", 0) or linear.attrs.get("alpha", 1.0) != 1.0 or linear.attrs.get("beta", 1.0) != 1.0:
            raise UnsupportedArchitectureError(f"{name}: unexpected Gemm attributes {linear.attrs} on the output projection")
        if linear.attrs.get("transB", 0):
            weight = add_node(graph, "Transpose", [weight], f"{name}.w_in_out", perm=[1, 0])
        bias = linear.inputs[2] if len(linear.inputs) > 2 else None
        out = linear.outputs[0]
    else:
        out = linear.outputs[0]
        adder = only_consumer(out)
        if adder is not None and adder.op == "Add":
            other = [t for t in adder.inputs if t is not out]
            if len(other) == 1 and is_weight(other[0]):
                bias, out = other[0], adder.outputs[0]
    return weight, bias, _follow(out)


def add_attn_result(graph: gs.Graph, layer: int, cfg: dict) -> None:
    """Rewrite block ``layer``'s output projection as a sum of per-head results, marked as ``attn.hook_result``."""
    site = f"blocks.{layer}.attn.hook_result"
    tensors = graph.tensors()
    z = tensors[f"blocks.{layer}.attn.hook_z"]
    weight, bias, out = _output_projection(graph, z, site)
    dtype = z.dtype
    w_heads = add_node(graph, "Reshape", [weight, int64_const(f"{site}.w_shape", [cfg["n_heads"], cfg["d_head"], -1])],
                    f"{site}.w_heads", dtype)  # [h, d_head, d_model]
    z_heads = add_node(graph, "Transpose", [z], f"{site}.z_heads", dtype, perm=[0, 2, 1, 3])  # [b, h, p, d_head]
    per_head = add_node(graph, "MatMul", [z_heads, w_heads], f"{site}.per_head", dtype)  # [b, h, p, d_model]
    result = add_node(graph, "Transpose", [per_head], f"{site}.raw", dtype, perm=[0, 2, 1, 3])
    summed = add_node(graph, "ReduceSum", [add_marker(graph, result, site), int64_const(f"{site}.heads_axis", [2])],
                   f"{site}.summed", dtype, keepdims=0)
    total = add_node(graph, "Add", [summed, bias], f"{site}.plus_bias", dtype) if bias is not None else summed
    rewire(out, total)


def _reaches(start: gs.Node, targets: set[str], limit: int = 64) -> bool:
    """Whether a tensor named in ``targets`` is computed within ``limit`` nodes downstream of ``start``."""
    frontier, seen = [start], set()
    while frontier and len(seen) < limit:
        node = frontier.pop(0)  # breadth first: the norm is a few nodes away, the residual path is long
        if id(node) in seen:
            continue
        seen.add(id(node))
        for out in node.outputs:
            if out.name in targets:
                return True
            frontier.extend(out.outputs)
    return False


def add_hook_mlp_in(graph: gs.Graph, layer: int, cfg: dict) -> None:
    """Give block ``layer``'s MLP norm its own input site ``hook_mlp_in`` (TransformerLens: a clone of resid_mid)."""
    site = f"blocks.{layer}.hook_mlp_in"
    tensors = graph.tensors()
    source = tensors.get(f"blocks.{layer}.hook_resid_mid", tensors[f"blocks.{layer}.hook_resid_pre"])
    norm_sites = {f"blocks.{layer}.ln2.hook_scale", f"blocks.{layer}.ln2.hook_normalized"}
    norm_reads = [n for n in source.outputs if _reaches(n, norm_sites)]
    if not norm_reads:
        raise UnsupportedArchitectureError(f"{site}: no MLP norm reading {source.name} found")
    copy = add_node(graph, "Identity", [source], f"{site}.input", source.dtype)
    marked = add_marker(graph, copy, site)
    for node in norm_reads:
        shared = [c for c in node.outputs[0].outputs if not _reaches(c, norm_sites)] if node.op in _PASS_THROUGH else []
        if shared:  # e.g. OPT flattens the tokens once for both the norm and the residual add: the norm gets its own view
            view = gs.Variable(f"{site}.view", dtype=node.outputs[0].dtype)
            graph.nodes.append(gs.Node(node.op, name=f"{site}.view", attrs=dict(node.attrs),
                                       inputs=[marked, *node.inputs[1:]], outputs=[view]))
            for consumer in [c for c in node.outputs[0].outputs if c not in shared]:
                for i, tensor in enumerate(consumer.inputs):
                    if tensor is node.outputs[0]:
                        consumer.inputs[i] = view
            continue
        for i, tensor in enumerate(node.inputs):
            if tensor is source:
                node.inputs[i] = marked


# config flag → the rewrite that adds its sites in one block (split_attention_input serves both of its flags)
REWRITES = {"use_attn_result": add_attn_result, "use_hook_mlp_in": add_hook_mlp_in}
SPLIT_FLAGS = ("use_split_qkv_input", "use_attn_in")


def with_extra_sites(proto: onnx.ModelProto, cfg: dict, arch: Architecture) -> onnx.ModelProto:
    """A copy of ``proto`` (an instrumented bundle graph) with the sites of the flags ``cfg`` turns on, in every block."""
    graph = gs.import_onnx(proto)
    for layer in range(cfg["n_layers"]):
        for flag, rewrite in REWRITES.items():
            if cfg.get(flag):
                rewrite(graph, layer, cfg)
        if any(cfg.get(flag) for flag in SPLIT_FLAGS):
            split_attention_input(graph, layer, cfg, arch)
    return instrumented_model(graph, proto, cfg)
