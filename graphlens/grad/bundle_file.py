"""The bundle's gradient graph ``backward.onnx``: forward + backward at every hook, for any ONNX Runtime binding.

``backward.onnx`` takes ``model.onnx``'s inputs (its substitution inputs too, with the same defaults)
plus ``logits_grad`` (d metric / d logits, the logits' shape) and outputs ``logits``, every hook and
every ``<hook>_grad`` (the gradients of ``sum(logits * logits_grad)``). Its weights are references
into ``model.onnx.data`` when the bundle has one (shared by name, as ``decoder.onnx``'s).

``request_graph`` specialises it per request like the forward (only the asked outputs and gradients,
only the fed sites), and for the loss computes ``logits_grad`` in the graph from the logits.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import onnx
from onnx import helper

from graphlens.export_names import is_substitution_input
from graphlens.grad.backward import LOGITS, LOGITS_GRAD, LOSS_TARGETS, LOSS_WEIGHTS, grad_name, loss_seed, with_backward
from graphlens.grad.builder import PREFIX, Builder
from graphlens.rewrite.specialise import FEED_KINDS, specialise

BACKWARD_FILE = "backward.onnx"
_LOSS_PREFIX = "graphlens.grad.loss/"


def _sites(model: onnx.ModelProto) -> dict[str, set[str]]:
    """hook → the substitution kinds (``patch``, ``add``) ``model`` has inputs for."""
    sites: dict[str, set[str]] = {}
    for inp in model.graph.input:
        if is_substitution_input(inp.name):
            hook, _, kind = inp.name.rpartition(".")
            if kind in FEED_KINDS:  # patch (with its patch_mask) and add
                sites.setdefault(hook, set()).add(kind)
    return sites


def backward_graph(model: onnx.ModelProto, types: Mapping[str, onnx.ValueInfoProto]) -> onnx.ModelProto:
    """``model`` (a bundle's instrumented forward) with ``<hook>_grad`` outputs for every hook; every
    substitution input stays an input with its default (unfed: no intervention)."""
    hooks = [o.name for o in model.graph.output if o.name != LOGITS]
    graph = with_backward(model, types, [LOGITS] + hooks, hooks, _sites(model), seed="logits_grad")
    kept = {i.name for i in graph.graph.initializer}
    graph.graph.initializer.extend(i for i in model.graph.initializer
                                   if is_substitution_input(i.name) and i.name not in kept)
    graph.producer_name, graph.producer_version = model.producer_name, model.producer_version
    onnx.checker.check_model(graph, full_check=False)
    return graph


def _unfed_patch_grads(nodes: Iterable[onnx.NodeProto], fed: Mapping[str, Iterable[str]]) -> list[onnx.NodeProto]:
    """The backward's ``Where(mask, 0, grad)`` of each unfed patch site as Identity (its mask is all False)."""
    patched = {f"{hook}.patch_mask" for hook, kinds in fed.items() if "patch" in kinds}
    out = []
    for node in nodes:
        if (node.op_type == "Where" and node.name.startswith(PREFIX) and node.input[0].endswith(".patch_mask")
                and node.input[0] not in patched):
            node = helper.make_node("Identity", [node.input[2]], list(node.output), name=node.name)
        out.append(node)
    return out


def _with_loss_seed(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with ``logits_grad`` computed from the logits: the gradient of the mean next-token loss."""
    b = Builder({}, {}, prefix=_LOSS_PREFIX)
    b.nodes.append(helper.make_node("Identity", [loss_seed(b, LOGITS)], [LOGITS_GRAD], name=b.fresh("seed")))
    nodes = list(model.graph.node)
    first = next(i for i, n in enumerate(nodes) if LOGITS_GRAD in n.input)  # the backward starts here
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes[:first] + b.nodes + nodes[first:])
    out.graph.initializer.extend(b.initializers)
    inputs = [i for i in model.graph.input if i.name != LOGITS_GRAD]
    del out.graph.input[:]
    out.graph.input.extend(inputs + [
        helper.make_tensor_value_info(LOSS_TARGETS, onnx.TensorProto.INT64, ["batch", "pos"]),
        helper.make_tensor_value_info(LOSS_WEIGHTS, onnx.TensorProto.FLOAT, ["batch", "pos"]),
    ])
    return out


def request_graph(backward: onnx.ModelProto, outputs: Iterable[str], grads_of: Iterable[str],
                  fed: Mapping[str, Iterable[str]], seed: str) -> onnx.ModelProto:
    """``backward`` (a ``backward_graph``) computing only ``outputs`` and the gradients of ``grads_of``, with
    substitution inputs at the ``fed`` sites only; ``seed``: ``"logits_grad"`` (fed) or ``"loss"``."""
    model = onnx.ModelProto()
    model.CopyFrom(backward)
    nodes = _unfed_patch_grads(model.graph.node, fed)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if seed == "loss":
        model = _with_loss_seed(model)
    return specialise(model, list(outputs) + [grad_name(h) for h in grads_of], fed)


def backward_entry(graph: onnx.ModelProto, shared_weights: bool) -> dict:
    """The manifest's ``backward`` entry: its file, inputs and outputs, and each hook's gradient output."""
    from graphlens.rewrite.manifest_io import graph_io, input_defaults

    hooks = [o.name for o in graph.graph.output if o.name != LOGITS and not o.name.endswith("_grad")]
    return {
        "file": BACKWARD_FILE,
        **graph_io(graph, input_defaults(graph)),
        "metric": f"sum(logits * {LOGITS_GRAD})",
        "gradients": [{"hook": hook, "name": grad_name(hook)} for hook in hooks],
        "weights": "shared with the model's external data file" if shared_weights else "own copy inside backward.onnx",
    }


def write_backward(folder, model_file: str, shared: bool) -> dict:
    """Write ``backward.onnx`` for the bundle being written in ``folder`` (its ``model_file`` there);
    ``shared``: its weights become references into the model's external data file. Returns the
    manifest's ``backward`` entry."""
    from pathlib import Path

    from graphlens.bundle_check import read_external_weights
    from graphlens.export.decoder import point_at_model_data
    from graphlens.rewrite.partition import value_types

    folder = Path(folder)
    source = onnx.load(str(folder / model_file), load_external_data=False)
    read_external_weights(source, folder)
    graph = backward_graph(source, value_types(source))
    del source
    shared = shared and point_at_model_data(graph, folder / model_file)
    onnx.save_model(graph, folder / BACKWARD_FILE)
    return backward_entry(graph, shared)


def add_gradients(bundle, out, overwrite: bool = False):
    """Write ``out``: ``bundle`` plus ``backward.onnx`` (its weights shared with ``model.onnx.data``); returns ``out``."""
    import shutil

    from graphlens.bundle import derived_bundle_paths, read_manifest, write_manifest, writing_bundle
    from graphlens.bundle_write import MANIFEST, bundle_files
    from graphlens.errors import InputError

    bundle, out = derived_bundle_paths(bundle, out, overwrite)
    manifest = read_manifest(bundle)
    if "deployment" in manifest:
        raise InputError(f"{bundle} is a deployment (required substitution inputs); add gradients to its source bundle")
    with writing_bundle(out, overwrite) as tmp:
        for name in sorted(bundle_files(bundle) - {MANIFEST, BACKWARD_FILE}):
            if (bundle / name).is_file():
                shutil.copy2(bundle / name, tmp / name)
        entry = write_backward(tmp, manifest["model_file"], bool(manifest.get("external_data_file")))
        write_manifest(tmp, {**{k: v for k, v in manifest.items() if k != "files"}, "backward": entry})
    return out
