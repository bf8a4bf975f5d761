"""Cut an instrumented graph at hooked sites, so Python hooks run between its parts in one pass.

A hooked site loses its ``Where``/``Add``: the part that computes the site's input tensor (the
*pre-hook* value) returns it, Python hooks turn it into the site's value, and later parts read that
value as an input. Every other node lands in exactly one part, the earliest whose inputs are ready
(its *stage*), so no model work is repeated; the tensors live across a cut (the residual stream
around a hooked ``hook_q``, shape tensors, masks) are outputs of one part and inputs of a later one.
Nodes that read only constants and initializers are copied into each part that needs them, and so
are the cheap non-float tensors computed from the graph inputs alone (shapes, causal masks, position
ids): the only tensors that cross a cut are then activations with a leading batch axis, which lets
a patching sweep feed any part a batch of variants (see ``graphlens.patching``).

Tensors listed as ``given`` are inputs from outside (``start_at_layer``'s residual stream): what
only they need upstream is pruned away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import onnx

from graphlens.export_names import is_substitution_input
from graphlens.rewrite.specialise import empty_model_like, needed_nodes, substitution_nodes
from graphlens.errors import InputError

FREE = -1  # the stage of constants: computed wherever they are needed


@dataclass
class Part:
    """One session of a partitioned run: feed ``inputs``, get ``outputs``, then call ``hooks``."""

    model: onnx.ModelProto | None  # None when the part has no nodes (only hooks run at this stage)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    def node_count(self, op_types: Iterable[str] | None = None) -> int:
        if self.model is None:
            return 0
        ops = set(op_types) if op_types is not None else None
        return sum(1 for n in self.model.graph.node if ops is None or n.op_type in ops)


@dataclass
class Plan:
    parts: list[Part]
    pre: dict[str, str]  # hooked site → the tensor its hooks receive
    outputs: list[str]
    passthrough: frozenset[str] = frozenset()  # cut sites whose value goes on unchanged (no hooks run there)


def pre_hook_tensor(graph: onnx.GraphProto, site: str) -> str:
    """The tensor a site's ``Where`` reads: the activation before any substitution or hook."""
    for node in graph.node:
        if node.name == f"{site}.where":
            return node.input[2] if node.op_type == "Where" else node.input[0]
    raise InputError(f"the graph has no hook site {site!r}")


def value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Type (and inferred shape) of every tensor of ``model``: the parts' inputs and outputs need them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {v.name: v for v in list(graph.value_info) + list(model.graph.input) + list(model.graph.output)}


def plan(
    model: onnx.ModelProto,
    hooked: Sequence[str],
    outputs: Sequence[str],
    given: Sequence[str] = (),
    fed: Mapping[str, Iterable[str]] | None = None,
    types: Mapping[str, onnx.ValueInfoProto] | None = None,
) -> Plan:
    """Split ``model`` so that each site in ``hooked`` becomes a cut where Python supplies its value.

    ``outputs``: tensor names the caller wants (hook names, "logits", pre-hook tensors).
    ``given``: tensor names the caller feeds instead of computing them. ``fed``: substitution inputs
    fed as in ``specialise``. Hooks of one part are listed in ``hooked``'s order.
    """
    graph = model.graph
    fed = {hook: set(kinds) for hook, kinds in (fed or {}).items()}
    types = types if types is not None else value_types(model)
    both = set(hooked) & set(fed)
    if both:
        raise InputError(f"sites {sorted(both)} are both hooked and fed substitution inputs; use one or the other")

    hooked_names = {f"{site}.{role}" for site in hooked for role in ("where", "add")}
    pre = {site: pre_hook_tensor(graph, site) for site in hooked}
    nodes = [n for n in substitution_nodes(graph, fed) if n.name not in hooked_names]
    outputs = list(dict.fromkeys(outputs))
    kept, _ = needed_nodes(nodes, outputs + list(pre.values()), given)

    # a substitution input is a constant unless fed; the model's own inputs with defaults
    # (attention_mask, position_ids) are always inputs: the caller feeds them or their defaults
    initializers = {i.name for i in graph.initializer} - {
        i.name for i in graph.input if _is_fed_input(i.name, fed) or not is_substitution_input(i.name)}
    stage: dict[str, int] = {name: FREE for name in initializers}
    stage.update({i.name: 0 for i in graph.input if i.name not in initializers})
    stage.update({name: 0 for name in given})
    by_pre: dict[str, list[str]] = {}
    for site, tensor in pre.items():
        by_pre.setdefault(tensor, []).append(site)

    def settle(tensor: str) -> None:  # a hooked site's value exists one stage after its pre-hook tensor
        for site in by_pre.get(tensor, ()):
            stage[site] = max(stage[tensor], 0) + 1
            settle(site)

    for name in list(stage):
        settle(name)
    wanted = set(outputs) | set(pre.values())
    # graph inputs, then the cheap tensors computed from them alone (recomputed in each part: stage FREE)
    light = {i.name for i in graph.input} - set(given)
    node_stage: list[int] = []
    for node in kept:
        reads = _reads(node)
        unknown = [t for t in reads if t not in stage]
        if unknown:
            raise InputError(f"cannot partition: node {node.name} reads {unknown}, which nothing computes")
        s = max((0 if t in light else stage[t] for t in reads), default=FREE)
        if s == 0 and _recomputable(node, stage, light, types, wanted):
            s = FREE
            light.update(node.output)
        node_stage.append(s)
        for out in node.output:
            stage[out] = s
            settle(out)

    hook_stage = {site: max(stage[pre[site]], 0) for site in hooked}
    n_parts = max([0, *node_stage, *hook_stage.values()]) + 1
    free_producers = {out: node for node, s in zip(kept, node_stage) if s == FREE for out in node.output}

    part_nodes: list[list[onnx.NodeProto]] = []
    for k in range(n_parts):
        own = [node for node, s in zip(kept, node_stage) if s == k]
        part_nodes.append(_with_free_producers(own, free_producers, kept) if own else [])

    produced = [{o for n in own for o in n.output} for own in part_nodes]
    reads = [[t for n in own for t in _reads(n)] for own in part_nodes]
    inputs = [
        list(dict.fromkeys(t for t in r if t not in produced[k] and t not in initializers)) for k, r in enumerate(reads)
    ]
    wanted_later = set(outputs) | set(pre.values())
    parts = []
    for k in range(n_parts):
        later = wanted_later.union(*inputs[k + 1:])
        outs = [o for n in part_nodes[k] if stage.get(n.output[0]) == k for o in n.output if o in later]
        hooks = [site for site in hooked if hook_stage[site] == k]
        proto = _part_model(model, part_nodes[k], inputs[k], outs, types) if part_nodes[k] else None
        parts.append(Part(proto, inputs[k], outs, hooks))
    return Plan(parts, pre, outputs)


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def _recomputable(node, stage, inputs, types, wanted) -> bool:
    """Whether ``node`` is a cheap function of ``inputs`` and constants, with no float (activation) output."""
    if any(stage[t] != FREE and t not in inputs for t in _reads(node)):
        return False
    for out in node.output:
        info = types.get(out)
        if out in wanted or info is None or info.type.tensor_type.elem_type in _FLOATS:
            return False
    return True


def _is_fed_input(name: str, fed: Mapping[str, set]) -> bool:
    hook, _, kind = name.rpartition(".")
    return hook in fed and ("add" if kind == "add" else "patch") in fed[hook]


def _reads(node: onnx.NodeProto) -> list[str]:
    names = [i for i in node.input if i]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            names += [i for n in attr.g.node for i in n.input if i]
    return names


def _with_free_producers(own: list[onnx.NodeProto], free_producers: dict, kept: list[onnx.NodeProto]) -> list:
    """``own`` plus the constant-only nodes they read (transitively), in the graph's order."""
    chosen = {id(n) for n in own}
    todo = [t for n in own for t in _reads(n)]
    while todo:
        producer = free_producers.get(todo.pop())
        if producer is not None and id(producer) not in chosen:
            chosen.add(id(producer))
            todo += _reads(producer)
    return [n for n in kept if id(n) in chosen]


def _part_model(model, nodes, inputs, outputs, types) -> onnx.ModelProto:
    out = empty_model_like(model)
    g = out.graph
    g.node.extend(nodes)
    missing = [name for name in inputs + outputs if name not in types]
    if missing:
        raise InputError(f"cannot partition: no type known for tensors {missing}")
    g.input.extend(types[name] for name in inputs)
    g.output.extend(types[name] for name in outputs)
    read = {t for n in nodes for t in _reads(n)}
    g.initializer.extend(i for i in model.graph.initializer if i.name in read and i.name not in set(inputs))
    return out
