"""A TransformerLens weight (``W_Q`` of one block …) as graph ops on the HF initializer that holds it.

The architecture's own weight mapping (``Architecture.read_weights``) is run once on *index arrays*
(each initializer replaced by the flat positions of its elements), so the result says, element by
element, where each TL weight lives. Every layout the adapters use for q/k/v (``nn.Linear`` heads, GPT-2's
fused Conv1D, NeoX's per-head fusion …) is a strided view: ``base + Σ index·stride``. Such a view is
written as ``Reshape → Slice → Reshape → Transpose`` on the initializer, so the graph reads the weights it
already has (no copy), and weight processing stays in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphlens.errors import NotSupportedError


class _IndexParams(Mapping):
    """HF parameter name → int64 array of global element ids (1-based: 0 is a bias HF lacks), made on demand."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        self.shapes, self.offsets, self._next = shapes, {}, 1

    def __getitem__(self, name: str) -> np.ndarray:
        shape = self.shapes[name]
        if name not in self.offsets:
            self.offsets[name] = self._next
            self._next += int(np.prod(shape, dtype=np.int64))
        start = self.offsets[name]
        return np.arange(start, start + int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def owner(self, element: int) -> tuple[str, int]:
        """The parameter holding global element id ``element`` and the id's offset there."""
        for name, start in self.offsets.items():
            if start <= element < start + int(np.prod(self.shapes[name], dtype=np.int64)):
                return name, start
        raise KeyError(element)


@dataclass(frozen=True)
class StridedView:
    """``weight[i0, i1, …] = flat(init)[base + Σ ik·strides[k]]`` with ``shape`` the TL shape."""

    init: str
    base: int
    strides: tuple[int, ...]
    shape: tuple[int, ...]


def trace_weights(read_weights, shapes: Mapping[str, tuple[int, ...]], cfg: dict, layer: int,
                  names: list[str], family: str) -> dict[str, StridedView | None]:
    """Where each TL weight ``names`` (e.g. ``blocks.0.attn.W_Q``) of block ``layer`` lives; None: all zeros (absent)."""
    params = _IndexParams(shapes)
    tl = read_weights(params, cfg, layer)
    views: dict[str, StridedView | None] = {}
    for name in names:
        ids = np.asarray(tl[name])
        if not np.issubdtype(ids.dtype, np.integer):
            raise NotSupportedError(f"{family}: {name} is not a plain view of one HF parameter (its layout computes "
                                    "values), so it cannot be read per head in the graph")
        if not ids.any():
            views[name] = None
            continue
        init, start = params.owner(int(ids.flat[0]))
        local = ids - start
        if local.min() < 0 or local.max() >= int(np.prod(params.shapes[init], dtype=np.int64)):
            raise NotSupportedError(f"{family}: {name} mixes several HF parameters (or computes values), so it "
                                    "cannot be read per head in the graph")
        base = int(local.flat[0])
        strides = tuple(int(np.take(local, 1, axis=k).flat[0]) - base if n > 1 else 0 for k, n in enumerate(ids.shape))
        grid = np.indices(ids.shape, dtype=np.int64)
        if not np.array_equal(base + np.tensordot(np.asarray(strides, np.int64), grid, axes=1), local):
            raise NotSupportedError(f"{family}: {name} is not a strided view of {init}, so it cannot be read per head "
                                    "in the graph")
        views[name] = StridedView(init, base, strides, tuple(ids.shape))
    _check_on_values(read_weights, params, views, cfg, layer, family)
    return views


def _check_on_values(read_weights, params: _IndexParams, views: dict, cfg: dict, layer: int, family: str) -> None:
    """The views again, on random values: a layout that scales or offsets ids (``a * 2``, ``a + 1``) fails here."""
    rng = np.random.default_rng(0)
    values = {name: rng.standard_normal(params.shapes[name]) for name in params.offsets}
    tl = read_weights(values, cfg, layer)
    for name, view in views.items():
        if view is None:
            got = np.zeros_like(tl[name])
        else:
            grid = np.indices(view.shape, dtype=np.int64)
            got = values[view.init].reshape(-1)[view.base + np.tensordot(np.asarray(view.strides, np.int64), grid, axes=1)]
        if not np.array_equal(got, tl[name]):
            raise NotSupportedError(f"{family}: {name} is not a plain view of one HF parameter (its layout computes "
                                    "values), so it cannot be read per head in the graph")


def _i64(name: str, values) -> gs.Constant:
    return gs.Constant(name, np.asarray(values, dtype=np.int64))


def view_in_graph(graph: gs.Graph, view: StridedView, tensor: gs.Tensor, name: str) -> gs.Variable:
    """Graph ops computing ``view`` from the initializer ``tensor`` (Reshape, Slice, Reshape, Transpose)."""
    total = int(np.prod(tensor.shape, dtype=np.int64))
    moving = sorted((k for k, n in enumerate(view.shape) if n > 1), key=lambda k: -view.strides[k])
    strides = [view.strides[k] for k in moving]
    if strides and strides[-1] < 1 or any(a % b for a, b in zip(strides, strides[1:])) or (strides and total % strides[0]):
        raise NotSupportedError(f"{name}: the weight view of {view.init} does not nest; cannot read it per head")
    # the flat initializer as [total/s0, s0/s1, …, s_last]: each moving axis is one of these, sliced
    radices = ([total // strides[0]] if strides else []) + [a // b for a, b in zip(strides, strides[1:])]
    radices.append(strides[-1] if strides else total)
    starts, rest = [], view.base
    for stride in strides:
        starts.append(rest // stride)
        rest %= stride
    starts.append(rest)
    ends = [s + view.shape[k] for s, k in zip(starts, moving)] + [rest + 1]
    if any(e > r for e, r in zip(ends, radices)):
        raise NotSupportedError(f"{name}: the weight view of {view.init} wraps around; cannot read it per head")
    dtype = tensor.dtype

    def node(op: str, inputs: list, suffix: str, **attrs) -> gs.Variable:
        out = gs.Variable(f"{name}.{suffix}", dtype=dtype)
        graph.nodes.append(gs.Node(op, name=f"{name}.{suffix}.node", inputs=inputs, outputs=[out], attrs=attrs))
        return out

    grid = node("Reshape", [tensor, _i64(f"{name}.grid_const", radices)], "grid")
    axes = list(range(len(radices)))
    part = node("Slice", [grid, _i64(f"{name}.starts_const", starts), _i64(f"{name}.ends_const", ends), _i64(f"{name}.axes_const", axes)],
                "slice")
    sorted_shape = [view.shape[k] for k in moving]
    compact = node("Reshape", [part, _i64(f"{name}.sorted_shape_const", sorted_shape)], "sorted")
    order = sorted(range(len(moving)), key=lambda i: moving[i])  # back to the TL axis order (size-1 axes aside)
    ordered = node("Transpose", [compact], "ordered", perm=order) if order != list(range(len(moving))) else compact
    return node("Reshape", [ordered, _i64(f"{name}.shape_const", view.shape)], "view")
