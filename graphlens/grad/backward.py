"""Reverse-mode differentiation of an instrumented forward graph, as one ONNX graph (forward + backward).

``with_backward(model, types, outputs, grads_of, fed, seed)`` returns a model that computes the forward
``outputs`` and ``<hook>_grad`` for every hook in ``grads_of``: the gradient of ``sum(logits * C)``
with ``C`` fed as ``logits_grad``, or (``seed="loss"``) of the mean next-token loss, whose ``C`` the
graph computes from the logits and two small inputs (the targets and each prediction's weight).

Only what the asked gradients need is built: tensors downstream of an asked hook are *active*, the
backward walks from the logits over active tensors only, and the result is pruned like any
specialised request. A hook's gradient is the sum over all its uses (TransformerLens' cache keeps only
the last use's part where a hook is used several times, e.g. ``ln1`` feeding q, k and v). A site fed a
patch passes no gradient upstream where its mask is set (the ``Where`` routes the gradient to the patch).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphlens.errors import NotSupportedError
from graphlens.grad.builder import Builder
from graphlens.grad.rules import ALL, DIFFERENTIABLE, RULES
from graphlens.rewrite.specialise import specialise, substitution_nodes

GRAD_SUFFIX = "_grad"
LOGITS = "logits"
LOGITS_GRAD = "logits_grad"  # input: d metric / d logits, the logits' shape
LOSS_TARGETS = "graphlens.grad.loss_targets"  # input: the next token at each position (int64 [batch, pos])
LOSS_WEIGHTS = "graphlens.grad.loss_weights"  # input: each prediction's weight in the mean loss ([batch, pos])
SEEDS = ("logits_grad", "loss")


def grad_name(hook: str) -> str:
    """``"blocks.0.hook_resid_pre"`` → ``"blocks.0.hook_resid_pre_grad"`` (TransformerLens' cache key)."""
    return hook + GRAD_SUFFIX


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of the small constant tensors (Constant nodes, initializers held in the graph)."""
    values = {}
    for init in graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            values[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type in _FOLDED and node.input and all(i in values for i in node.input if i):
            args = [values[i] for i in node.input if i]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            values[node.output[0]] = _FOLDED[node.op_type](args, attrs)
    return values


# the shape-arithmetic ops whose constant results the rules read (Slice axes, split sizes, positions)
_FOLDED = {
    "Identity": lambda a, k: a[0],
    "Cast": lambda a, k: a[0].astype(helper.tensor_dtype_to_np_dtype(k["to"])),
    "Reshape": lambda a, k: a[0].reshape(a[1]),
    "Unsqueeze": lambda a, k: np.expand_dims(a[0], tuple(int(i) for i in a[1])),
    "Squeeze": lambda a, k: np.squeeze(a[0], tuple(int(i) for i in a[1])) if len(a) > 1 else np.squeeze(a[0]),
    "Concat": lambda a, k: np.concatenate(a, axis=k["axis"]),
}


def _positions(node: onnx.NodeProto) -> range | tuple:
    diff = DIFFERENTIABLE.get(node.op_type, ())
    return range(len(node.input)) if diff is ALL else diff


class _Grads:
    """Gradient contributions per tensor, summed on first read."""

    def __init__(self, b: Builder):
        self.b, self.parts = b, {}

    def add(self, name: str, grad: str) -> None:
        self.parts.setdefault(name, []).append(grad)

    def total(self, name: str) -> str | None:
        parts = self.parts.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            parts[:] = [self.b.op("Sum", parts)]
        return parts[0]


def loss_seed(b: Builder, logits: str) -> str:
    """d mean-loss / d logits = (softmax(logits) - onehot(next token)) · weight of the prediction (the
    one-hot subtracted in place at the targets: no vocabulary-wide one-hot tensor)."""
    probs = b.op("Softmax", [logits], axis=-1)
    targets = b.op("Unsqueeze", [LOSS_TARGETS, b.const([-1], np.int64)])
    picked = b.op("GatherElements", [probs, targets], axis=-1)
    shifted = b.op("Sub", [picked, b.op("CastLike", [b.const(1.0, np.float32), logits])])
    seed = b.op("ScatterElements", [probs, targets, shifted], axis=-1)
    weights = b.op("Unsqueeze", [b.op("CastLike", [LOSS_WEIGHTS, logits]), b.const([-1], np.int64)])
    return b.op("Mul", [seed, weights])


def _active(nodes: list[onnx.NodeProto], b: Builder, sources: Iterable[str]) -> set[str]:
    """Float tensors that depend on a source (through any op: unsupported ones fail when reached)."""
    active = set(sources)
    for node in nodes:
        known = node.op_type in DIFFERENTIABLE
        inputs = [node.input[i] for i in _positions(node) if i < len(node.input)] if known else list(node.input)
        if any(i in active for i in inputs):
            active.update(o for o in node.output if b.is_float(o))
    return active


def with_backward(
    model: onnx.ModelProto,
    types: Mapping[str, onnx.ValueInfoProto],
    outputs: Iterable[str],
    grads_of: Iterable[str],
    fed: Mapping[str, Iterable[str]] | None = None,
    seed: str = "logits_grad",
) -> onnx.ModelProto:
    """``model`` specialised to ``outputs`` plus ``<hook>_grad`` for each hook in ``grads_of``."""
    assert seed in SEEDS, seed
    fed = {hook: set(kinds) for hook, kinds in (fed or {}).items()}
    grads_of = list(dict.fromkeys(grads_of))
    nodes = substitution_nodes(model.graph, fed)
    b = Builder(types, _constants(model.graph))
    active = _active(nodes, b, grads_of)
    grads = _Grads(b)
    grads.add(LOGITS, loss_seed(b, LOGITS) if seed == "loss" else LOGITS_GRAD)
    sequences: dict[str, dict[int, str]] = {}

    reach = {LOGITS}
    for node in reversed(nodes):
        if not any(o in reach and o in active for o in node.output):
            continue
        if node.op_type not in DIFFERENTIABLE:
            raise NotSupportedError(f"gradients through {node.op_type} ({node.name}) are not implemented")
        need = [i in _positions(node) and name in active for i, name in enumerate(node.input)]
        reach.update(name for name, n in zip(node.input, need) if n)
        if node.op_type == "SequenceAt":  # gathered into the SplitToSequence's gradient below
            gy = grads.total(node.output[0])
            if gy is not None:
                index = int(b.value(node.input[1]))
                seq = sequences.setdefault(node.input[0], {})
                seq[index] = b.op("Sum", [seq[index], gy]) if index in seq else gy
            continue
        if node.op_type == "SplitToSequence":
            _split_to_sequence(b, node, sequences.get(node.output[0], {}), grads)
            continue
        gouts = [grads.total(o) for o in node.output]
        if all(g is None for g in gouts):
            continue
        for name, g, n in zip(node.input, RULES[node.op_type](b, node, gouts, need), need):
            if n and g is not None:
                grads.add(name, g)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    logits_type = next(o for o in model.graph.output if o.name == LOGITS)
    if seed == "loss":
        out.graph.input.extend([
            helper.make_tensor_value_info(LOSS_TARGETS, onnx.TensorProto.INT64, ["batch", "pos"]),
            helper.make_tensor_value_info(LOSS_WEIGHTS, onnx.TensorProto.FLOAT, ["batch", "pos"]),
        ])
    else:
        seed_info = onnx.ValueInfoProto()
        seed_info.CopyFrom(logits_type)
        seed_info.name = LOGITS_GRAD
        out.graph.input.append(seed_info)
    names, renames = [], {}
    totals = {hook: grads.total(hook) for hook in grads_of}  # (summing a tensor's parts adds nodes)
    made = {o for node in b.nodes for o in node.output}
    for hook in grads_of:
        total = totals[hook] if totals[hook] is not None else b.zeros_like(hook)
        if total in made and total not in renames:  # the output is that tensor, renamed: no copy
            renames[total] = grad_name(hook)
        else:  # a forward tensor, an input, or another hook's gradient too (resid_post and the next resid_pre)
            b.nodes.append(helper.make_node("Identity", [total], [grad_name(hook)], name=b.fresh("output")))
        info = onnx.ValueInfoProto()
        info.CopyFrom(types[hook])
        info.name = grad_name(hook)
        out.graph.value_info.append(info)
        names.append(grad_name(hook))
    del out.graph.node[:]
    out.graph.node.extend(nodes + [_renamed(node, renames) for node in b.nodes])
    del out.graph.initializer[:]
    out.graph.initializer.extend(list(model.graph.initializer) + b.initializers)
    return specialise(out, list(outputs) + names, fed, keep_inputs=())


def _renamed(node: onnx.NodeProto, renames: Mapping[str, str]) -> onnx.NodeProto:
    if not any(n in renames for n in list(node.input) + list(node.output)):
        return node
    out = onnx.NodeProto()
    out.CopyFrom(node)
    out.input[:] = [renames.get(n, n) for n in node.input]
    out.output[:] = [renames.get(n, n) for n in node.output]
    return out


def _split_to_sequence(b: Builder, node: onnx.NodeProto, parts: dict[int, str], grads: _Grads) -> None:
    """SplitToSequence's gradient: the chunks' gradients (zeros for chunks no gradient reached) concatenated."""
    if not parts:
        return
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
    if len(node.input) < 2 or not node.input[1]:
        raise NotSupportedError(f"gradients: SplitToSequence without split sizes ({node.name})")
    sizes = b.value(node.input[1])
    if sizes.ndim == 0:  # equal chunks of this size
        dim = (b.dims(node.input[0]) or [None] * (axis + 1))[axis]
        if not isinstance(dim, int) or not dim:
            raise NotSupportedError(f"gradients: SplitToSequence of a dynamic axis ({node.name})")
        sizes = np.zeros(-(-dim // int(sizes)))
    chunks = []
    for i in range(len(sizes)):
        if i in parts:
            chunks.append(parts[i])
            continue
        chunk = b.op("SequenceAt", [node.output[0], b.const(i, np.int64)])
        b.types[chunk] = helper.make_tensor_value_info(chunk, b.elem_type(node.input[0]), None)
        chunks.append(b.zeros_like(chunk))
    grads.add(node.input[0], b.op("Concat", chunks, axis=axis))
