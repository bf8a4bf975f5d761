"""Vector-Jacobian products of the ONNX ops a bundle's forward graph contains.

Each rule takes the node, the gradients of its outputs (None: no gradient reaches that output) and
which inputs need one; it appends backward nodes to the builder and returns one gradient per input
(None where not needed). ``DIFFERENTIABLE`` says which inputs of each op can carry a gradient; shape,
index and mask inputs never do.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from graphlens.errors import NotSupportedError
from graphlens.grad.builder import Builder

Grads = list  # list[str | None]
Rule = Callable[[Builder, onnx.NodeProto, Grads, list], Grads]

ALL = None  # every input is differentiable
DIFFERENTIABLE: dict[str, tuple[int, ...] | None] = {
    "Identity": (0,), "Neg": (0,), "Sqrt": (0,), "Tanh": (0,), "Erf": (0,), "Sigmoid": (0,), "Relu": (0,),
    "Exp": (0,), "Log": (0,), "Sin": (0,), "Cos": (0,), "Cast": (0,), "CastLike": (0,),
    "Add": (0, 1), "Sub": (0, 1), "Mul": (0, 1), "Div": (0, 1), "Pow": (0,), "Where": (1, 2),
    "MatMul": (0, 1), "Gemm": (0, 1, 2), "Softmax": (0,), "ReduceMean": (0,), "ReduceSum": (0,),
    "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Flatten": (0,), "Transpose": (0,), "Expand": (0,),
    "Slice": (0,), "Concat": ALL, "Split": (0,), "SplitToSequence": (0,), "SequenceAt": (0,),
    "Min": ALL, "Max": ALL, "Gather": (0,),
}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unary(b: Builder, node, g, need):
    (x,), (y,), (gy,) = node.input, node.output, g
    kind = node.op_type
    if kind == "Identity":
        return [gy]
    if kind == "Neg":
        return [b.op("Neg", [gy])]
    if kind == "Sqrt":
        return [b.op("Div", [b.op("Mul", [gy, b.scalar(0.5, y)]), y])]
    if kind == "Tanh":
        return [b.op("Mul", [gy, b.op("Sub", [b.scalar(1.0, y), b.op("Mul", [y, y])])])]
    if kind == "Sigmoid":
        return [b.op("Mul", [gy, b.op("Mul", [y, b.op("Sub", [b.scalar(1.0, y), y])])])]
    if kind == "Erf":
        slope = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])
        return [b.op("Mul", [gy, b.op("Mul", [slope, b.scalar(2.0 / math.sqrt(math.pi), x)])])]
    if kind == "Relu":
        return [b.op("Where", [b.op("Greater", [x, b.scalar(0.0, x)]), gy, b.scalar(0.0, x)])]
    if kind == "Exp":
        return [b.op("Mul", [gy, y])]
    if kind == "Log":
        return [b.op("Div", [gy, x])]
    if kind == "Sin":
        return [b.op("Mul", [gy, b.op("Cos", [x])])]
    if kind == "Cos":
        return [b.op("Neg", [b.op("Mul", [gy, b.op("Sin", [x])])])]
    if kind == "Cast":
        return [b.op("Cast", [gy], to=b.elem_type(x))]
    raise AssertionError(kind)


def _cast_like(b, node, g, need):
    return [b.op("CastLike", [g[0], node.input[0]]), None]


def _binary(b: Builder, node, g, need):
    (x, w), (y,), (gy,) = node.input, node.output, g
    kind = node.op_type
    gx = gw = None
    if kind == "Add":
        gx, gw = gy, gy
    elif kind == "Sub":
        gx, gw = gy, (b.op("Neg", [gy]) if need[1] else None)
    elif kind == "Mul":
        gx = b.op("Mul", [gy, w]) if need[0] else None
        gw = b.op("Mul", [gy, x]) if need[1] else None
    elif kind == "Div":
        gx = b.op("Div", [gy, w]) if need[0] else None
        gw = b.op("Neg", [b.op("Div", [b.op("Mul", [gy, y]), w])]) if need[1] else None
    return [b.unbroadcast(gx, x, y) if need[0] else None, b.unbroadcast(gw, w, y) if need[1] else None]


def _pow(b: Builder, node, g, need):
    (x, e), (gy,) = node.input, g
    if e in b.constants and b.constants[e].size == 1 and float(b.constants[e]) == 2.0:  # the norms' square
        slope = b.op("Mul", [x, b.scalar(2.0, x)])
    else:
        e = b.op("CastLike", [e, x])
        slope = b.op("Mul", [e, b.op("Pow", [x, b.op("Sub", [e, b.scalar(1.0, x)])])])
    return [b.unbroadcast(b.op("Mul", [gy, slope]), x, node.output[0]), None]


def _where(b: Builder, node, g, need):
    (c, x, w), (y,), (gy,) = node.input, node.output, g
    zero = b.scalar(0.0, y)
    gx = b.unbroadcast(b.op("Where", [c, gy, zero]), x, y) if need[1] else None
    gw = b.unbroadcast(b.op("Where", [c, zero, gy]), w, y) if need[2] else None
    return [None, gx, gw]


def _swap_last(b: Builder, name: str) -> str:
    rank = b.rank(name)
    if rank < 2:
        raise NotSupportedError(f"gradients: MatMul of a rank-{rank} tensor {name!r}")
    return b.op("Transpose", [name], perm=list(range(rank - 2)) + [rank - 1, rank - 2])


def _matmul(b: Builder, node, g, need):
    (x, w), (y,), (gy,) = node.input, node.output, g
    out = [None, None]
    for i, (mine, other) in enumerate(((x, w), (w, x))):
        if not need[i]:
            continue
        other_t = _swap_last(b, other)
        grad = b.op("MatMul", [gy, other_t] if i == 0 else [other_t, gy])
        rank_y, rank_mine = b.rank(y), b.rank(mine)
        if rank_y > rank_mine:  # a weight broadcast over the batch axes: sum them
            grad = b.op("ReduceSum", [grad, b.const(list(range(rank_y - rank_mine)), np.int64)], keepdims=0)
        elif b.dims(mine)[:-2] != b.dims(y)[:-2]:
            grad = b.unbroadcast(grad, mine, None)
        out[i] = grad
    return out


def _gemm(b: Builder, node, g, need):
    (a, w, *c), (gy,) = node.input, g
    alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
    ta, tb = _attr(node, "transA", 0), _attr(node, "transB", 0)
    ga = gw = gc = None
    if need[0]:
        ga = (b.op("Gemm", [gy, w], alpha=alpha, transB=0 if tb else 1) if not ta
              else b.op("Gemm", [w, gy], alpha=alpha, transA=tb, transB=1))
    if need[1]:
        gw = (b.op("Gemm", [a, gy], alpha=alpha, transA=0 if ta else 1) if not tb
              else b.op("Gemm", [gy, a], alpha=alpha, transA=1, transB=ta))
    if c and len(need) > 2 and need[2]:
        scaled = gy if beta == 1.0 else b.op("Mul", [gy, b.scalar(beta, gy)])
        gc = b.unbroadcast(scaled, c[0], node.output[0])
    return [ga, gw, gc][: len(node.input)]


def _softmax(b: Builder, node, g, need):
    (y,), (gy,) = node.output, g
    axis = _attr(node, "axis", -1)
    # fully masked rows are NaN in the forward (the graph replaces them by 0 afterwards): no gradient there
    y = b.op("Where", [b.op("IsNaN", [y]), b.scalar(0.0, y), y])
    inner = b.op("ReduceSum", [b.op("Mul", [gy, y]), b.const([axis], np.int64)], keepdims=1)
    return [b.op("Mul", [y, b.op("Sub", [gy, inner])])]


def _reduce(b: Builder, node, g, need):
    (x, *axes), (y,), (gy,) = node.input, node.output, g
    if not _attr(node, "keepdims", 1):
        if axes and axes[0]:
            gy = b.op("Unsqueeze", [gy, axes[0]])
        else:
            gy = b.op("Reshape", [gy, b.op("ConstantOfShape", [b.op("Shape", [b.shape(x)])],
                                            value=helper.make_tensor("value", onnx.TensorProto.INT64, [1], [1]))])
    grad = b.op("Expand", [gy, b.shape(x)])
    if node.op_type == "ReduceMean":
        ratio = b.op("Div", [b.op("Cast", [b.op("Size", [y])], to=onnx.TensorProto.FLOAT),
                             b.op("Cast", [b.op("Size", [x])], to=onnx.TensorProto.FLOAT)])
        grad = b.op("Mul", [grad, b.op("CastLike", [ratio, x])])
    return [grad] + [None] * len(axes)


def _reshape(b: Builder, node, g, need):
    return [b.op("Reshape", [g[0], b.shape(node.input[0])])] + [None] * (len(node.input) - 1)


def _transpose(b: Builder, node, g, need):
    perm = _attr(node, "perm") or list(range(b.rank(node.input[0])))[::-1]
    return [b.op("Transpose", [g[0]], perm=[int(i) for i in np.argsort(perm)])]


def _expand(b: Builder, node, g, need):
    return [b.unbroadcast(g[0], node.input[0], node.output[0]), None]


def _slice(b: Builder, node, g, need):
    x, starts, ends, *rest = node.input
    rank = b.rank(x)
    n_axes = int(b.value(starts).size) if starts in b.constants else None
    axes = [int(a) % rank for a in b.value(rest[0]).ravel()] if rest and rest[0] else list(range(n_axes or 1))
    if len(axes) != 1:
        raise NotSupportedError(f"gradients: Slice over {len(axes)} axes ({node.name})")
    axis = axes[0]
    steps = rest[1] if len(rest) > 1 and rest[1] else b.const([1], np.int64)
    # the positions the slice read, spread over the sliced gradient's shape, receive it
    dim = b.op("Gather", [b.shape(x), b.const(axis, np.int64)])
    index = b.op("Range", [b.const(0, np.int64), dim, b.const(1, np.int64)])
    picked = b.op("Slice", [index, starts, ends, b.const([0], np.int64), steps])
    shape = [1] * rank
    shape[axis] = -1
    spread = b.op("Expand", [b.op("Reshape", [picked, b.const(shape, np.int64)]), b.op("Shape", [g[0]])])
    grad = b.op("ScatterElements", [b.zeros_like(x), spread, g[0]], axis=axis)
    return [grad] + [None] * (len(node.input) - 1)


def _concat(b: Builder, node, g, need):
    axis = _attr(node, "axis")
    axis_i = b.const([axis % b.rank(node.output[0])], np.int64)
    sizes = b.op("Concat", [b.op("Gather", [b.shape(i), axis_i]) for i in node.input], axis=0)
    parts = b.op("Split", [g[0], sizes], n_out=len(node.input), axis=axis)
    parts = [parts] if isinstance(parts, str) else parts
    return [p if n else None for p, n in zip(parts, need)]


def _split(b: Builder, node, g, need):
    axis = _attr(node, "axis", 0)
    parts = [gi if gi is not None else b.zeros_like(out) for gi, out in zip(g, node.output)]
    return [b.op("Concat", parts, axis=axis)] + [None] * (len(node.input) - 1)


def _min_max(b: Builder, node, g, need):
    """Min/Max: each input's gradient where it is the result (the first such input where several are)."""
    (y,), (gy,) = node.output, g
    zero, taken = b.scalar(0.0, y), None
    out = []
    for x, n in zip(node.input, need):
        chosen = b.op("Equal", [x, y])
        if taken is not None:
            chosen = b.op("And", [chosen, b.op("Not", [taken])])
        taken = chosen if taken is None else b.op("Or", [taken, chosen])
        out.append(b.unbroadcast(b.op("Where", [chosen, gy, zero]), x, y) if n else None)
    return out


def _gather(b: Builder, node, g, need):
    """Gather of a scalar or 1-D index along ``axis``: the gradient added back at the gathered positions."""
    (x, indices), (gy,) = node.input, g
    axis = _attr(node, "axis", 0) % b.rank(x)
    rank = b.dims(indices)
    if rank is None or len(rank) > 1:
        raise NotSupportedError(f"gradients: Gather with indices of rank {None if rank is None else len(rank)} ({node.name})")
    if not rank:  # a scalar index drops the axis
        gy = b.op("Unsqueeze", [gy, b.const([axis], np.int64)])
    shape = [1] * b.rank(x)
    shape[axis] = -1
    spread = b.op("Expand", [b.op("Reshape", [indices, b.const(shape, np.int64)]), b.op("Shape", [gy])])
    return [b.op("ScatterElements", [b.zeros_like(x), spread, gy], axis=axis, reduction="add"), None]


RULES: dict[str, Rule] = {
    **{k: _unary for k in ("Identity", "Neg", "Sqrt", "Tanh", "Erf", "Sigmoid", "Relu", "Exp", "Log", "Sin", "Cos",
                           "Cast")},
    **{k: _binary for k in ("Add", "Sub", "Mul", "Div")},
    "CastLike": _cast_like, "Pow": _pow, "Where": _where, "MatMul": _matmul, "Gemm": _gemm, "Softmax": _softmax,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "Transpose": _transpose, "Expand": _expand, "Slice": _slice,
    "Concat": _concat, "Split": _split, "Min": _min_max, "Max": _min_max, "Gather": _gather,
    **{k: _reshape for k in ("Reshape", "Squeeze", "Unsqueeze", "Flatten")},
}
