"""Turn every ``graphlens.Site`` marker into a hook: a named output plus substitution inputs.

For a site ``h`` marking tensor ``x`` the graph gets::

    h = Where(h.patch_mask, h.patch, x) + h.add

and every consumer of ``x`` (and of the marker's output) reads ``h`` instead, so a substitution
reaches all of the activation's uses. ``h`` is also a graph output. The inputs' unfed defaults
(mask False, add 0) are added when the bundle is written (``with_input_defaults``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphlens.export_names import PATCH_SUFFIXES, input_name
from graphlens.sites import kind_of, site_dims
from graphlens.errors import InputError

MARKER_DOMAIN, MARKER_OP = "graphlens", "Site"


def _replace_uses(graph: gs.Graph, old: gs.Variable, new: gs.Variable, skip: set[int]) -> None:
    for consumer in list(old.outputs):
        if id(consumer) in skip:
            continue
        for i, tensor in enumerate(consumer.inputs):
            if tensor is old:
                consumer.inputs[i] = new


def _ancestors(tensor: gs.Variable) -> set[int]:
    """ids of the nodes ``tensor`` depends on."""
    seen: set[int] = set()
    stack = list(tensor.inputs)
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(p for t in node.inputs for p in t.inputs)
    return seen


def _cover_flat_view(graph: gs.Graph, x: gs.Variable, hooked: gs.Variable) -> None:
    """A site marked on a view (``flat → Reshape → site → Reshape → flat'``, how a [batch*pos, …] tensor is
    marked as [batch, pos, …]) covers every use of the viewed tensor: its other consumers (OPT's residual
    skip beside ``hook_resid_mid``'s norm) read ``flat'``, so a patch reaches them too."""
    view = x.inputs[0] if x.inputs else None
    back = [n for n in hooked.outputs if n.op == "Reshape"]
    if view is None or view.op != "Reshape" or len(back) != 1:
        return
    flat, unflat = view.inputs[0], back[0].outputs[0]
    if flat.shape is not None and unflat.shape is not None and len(flat.shape) != len(unflat.shape):
        return
    _replace_uses(graph, flat, unflat, skip=_ancestors(unflat))


def _input(name: str, dtype, rank: int) -> gs.Variable:
    # every dim symbolic and unique: defaults are [1]*rank and any broadcastable array may be fed
    return gs.Variable(name, dtype=dtype, shape=[f"{name}_d{i}" for i in range(rank)])


PATCH_SITE_CHOICES = ("all", "resid", "none")


def has_patch_inputs(name: str, patch_sites: str) -> bool:
    """Whether site ``name`` gets substitution inputs under the export option ``patch_sites``."""
    if patch_sites not in PATCH_SITE_CHOICES:
        raise InputError(f"patch_sites must be one of {', '.join(PATCH_SITE_CHOICES)}; got {patch_sites!r}")
    return patch_sites == "all" or (patch_sites == "resid" and kind_of(name).suffix.startswith("hook_resid_"))


def instrument_sites(graph: gs.Graph, cfg: dict, patch_sites: str = "all") -> list[str]:
    """Replace the markers in ``graph`` (in place); returns the hook names in graph order.

    ``patch_sites``: which sites get substitution inputs ("all", "resid": the residual stream only,
    "none"); the others are plain outputs (an Identity named ``<hook>.where``).
    """
    graph.toposort()
    names: list[str] = []
    for node in [n for n in graph.nodes if n.domain == MARKER_DOMAIN and n.op == MARKER_OP]:
        name = node.attrs["name"]
        x, y = node.inputs[0], node.outputs[0]
        dims = site_dims(name, cfg)
        dtype = x.dtype if x.dtype is not None else np.float32
        hooked = gs.Variable(name, dtype=dtype, shape=dims)
        if has_patch_inputs(name, patch_sites):
            patch = _input(input_name(name, "patch"), dtype, len(dims))
            mask = _input(input_name(name, "patch_mask"), np.bool_, len(dims))
            add = _input(input_name(name, "add"), dtype, len(dims))
            patched = gs.Variable(f"{name}.patched", dtype=dtype)
            where = gs.Node("Where", name=f"{name}.where", inputs=[mask, patch, x], outputs=[patched])
            plus = gs.Node("Add", name=f"{name}.add", inputs=[patched, add], outputs=[hooked])
            graph.nodes += [where, plus]
            graph.inputs += [patch, mask, add]
        else:
            where = gs.Node("Identity", name=f"{name}.where", inputs=[x], outputs=[hooked])
            graph.nodes.append(where)
        _replace_uses(graph, x, hooked, skip={id(node), id(where)})
        _replace_uses(graph, y, hooked, skip=set())
        _cover_flat_view(graph, x, hooked)
        node.outputs.clear()
        node.inputs.clear()
        if y in graph.outputs:  # e.g. logits marked as unembed.hook_out: keep the output's own name
            graph.nodes.append(gs.Node("Identity", name=f"{name}.as_output", inputs=[hooked], outputs=[y]))
        graph.outputs.append(hooked)
        names.append(name)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return names


def with_input_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every substitution input an initializer default: unfed means 'no intervention'."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        suffix = next((s for s in PATCH_SUFFIXES if inp.name.endswith("." + s)), None)
        if suffix is None or inp.name in inits:
            continue
        rank = len(inp.type.tensor_type.shape.dim)
        elem = inp.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros([1] * rank, dtype=dtype), inp.name))
    return model


def instrumented_model(graph: gs.Graph, like: onnx.ModelProto, cfg: dict) -> onnx.ModelProto:
    """A rewrite of ``like`` (``graph``, its markers not yet instrumented) as a model: the markers made hooks
    (every one with substitution inputs), ``like``'s opsets, IR version and inputs, the inputs' defaults."""
    instrument_sites(graph, cfg, "all")
    out = gs.export_onnx(graph)
    # graphsurgeon imports an input that has an initializer as a constant: declare those inputs again
    declared = {i.name for i in out.graph.input}
    out.graph.input.extend(i for i in like.graph.input if i.name not in declared)
    del out.opset_import[:]
    out.opset_import.extend(like.opset_import)
    out.ir_version = like.ir_version
    return with_input_defaults(out)
