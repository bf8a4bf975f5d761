"""``graphlens deploy``: a bundle for consumers that can only feed required inputs (ONNX Runtime's JavaScript bindings).

The source bundle's substitution inputs are overridable initializers: Python, C, C++ and C# accept
feeds for them, but onnxruntime-node and onnxruntime-web forward only feeds named in
``session.inputNames``, which lists inputs without an initializer, and silently drop the rest. A
deployment keeps only the hook outputs asked for and the substitution inputs of the sites asked for,
as **required** inputs (no initializer); every other site's ``Where``/``Add`` is gone and the graph
is pruned, so ONNX Runtime folds constants through it. Every other overridable initializer (any
graph input with a default) becomes a required input too, so a consumer sees exactly the inputs it
must feed. The manifest lists each with its ``default`` (the "no intervention" value a client fills
when it has nothing to feed); the decoder graph gets the same treatment.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import onnx

from graphlens.bundle import EXTERNAL_DATA_FILE, FORMAT_VERSION, derived_bundle_paths, read_manifest, save_model, write_manifest, writing_bundle
from graphlens.errors import InputError
from graphlens.rewrite.manifest_io import graph_io, hook_entries, input_defaults
from graphlens.rewrite.specialise import specialise
from graphlens.sites import select_hooks
from graphlens.runtime.graph import LOGITS
from graphlens.runtime.tokenizer import tokenizer_entry


def deployment_graph(model: onnx.ModelProto, outputs: Sequence[str], patch_sites: Sequence[str]) -> onnx.ModelProto:
    """``model`` computing only ``outputs``, with required substitution inputs at ``patch_sites`` and no
    overridable initializer left (each becomes a required input)."""
    graph = specialise(model, outputs, {hook: ("patch", "add") for hook in patch_sites})
    inputs = {i.name for i in graph.graph.input}
    kept = [i for i in graph.graph.initializer if i.name not in inputs]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    graph.producer_name, graph.producer_version = model.producer_name, model.producer_version
    onnx.checker.check_model(graph, full_check=False)
    return graph


def deploy(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    hooks: Iterable[str] = ("all",),
    patch: Iterable[str] = (),
    decoder: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write ``out``: ``bundle`` with the hook outputs matching ``hooks`` and required substitution inputs
    (``.patch``, ``.patch_mask``, ``.add``) at the sites matching ``patch`` (outputs too); returns ``out``.

    ``decoder``: also deploy ``decoder.onnx`` (same outputs and sites, plus the KV cache) when the
    bundle has one.
    """
    bundle, out = derived_bundle_paths(bundle, out, overwrite)
    manifest = read_manifest(bundle)
    if "deployment" in manifest:
        raise InputError(f"{bundle} is a deployment already; deploy its source bundle ({manifest['deployment']['source_bundle']})")
    entries = {h["name"]: h for h in manifest["hooks"]}
    names = list(entries)
    sites = select_hooks(names, patch, "--patch")
    # a patch site is an output too, so that the manifest lists its inputs under its hook
    wanted = set(select_hooks(names, hooks, "--hooks")) | set(sites)
    kept = [n for n in names if n in wanted]
    closed = [h for h in sites if not entries[h]["inputs"]]
    if closed:
        raise InputError(f"{closed[0]} (and {len(closed) - 1} more) has no substitution inputs in {bundle}; "
                         "export it again with --patch-sites all")
    cfg, dtype, model_file = manifest["config"], manifest["dtype"], manifest["model_file"]
    source = onnx.load(str(bundle / model_file), load_external_data=True)
    defaults = input_defaults(source)
    graph = deployment_graph(source, [o["name"] for o in manifest["outputs"]] + kept, sites)
    del source
    with_decoder = decoder and bool(manifest.get("decoder"))

    with writing_bundle(out, overwrite) as tmp:
        big = save_model(graph, tmp / model_file, True if with_decoder else None)
        for name in manifest.get("tokenizer_files") or []:
            shutil.copy2(bundle / name, tmp / name)
        result = {
            **{k: v for k, v in manifest.items() if k not in ("decoder", "files", "backward")},
            "format_version": FORMAT_VERSION,  # everything below is rebuilt from the graphs, whatever the source's version
            "tokenizer": tokenizer_entry(tmp),
            "external_data_file": EXTERNAL_DATA_FILE if big else None,
            **graph_io(graph, defaults),
            "hooks": hook_entries(kept, cfg, dtype, graph, defaults),
            "deployment": {"source_bundle": str(bundle), "hooks": kept, "patch_sites": sites},
        }
        if with_decoder:
            from graphlens.export.decoder import point_at_model_data, write_decoder

            entry = manifest["decoder"]
            source = onnx.load(str(bundle / entry["file"]), load_external_data=True)
            outputs = [LOGITS] + [o["name"] for o in entry["outputs"] if o["name"].startswith("present.")]
            decoder_hooks = [h for h in kept if h in set(entry.get("hook_names") or names)]
            decoder_graph = deployment_graph(source, outputs + decoder_hooks, sites)
            shared = point_at_model_data(decoder_graph, tmp / model_file)
            result["decoder"] = write_decoder(decoder_graph, decoder_hooks, tmp, cfg, dtype, shared, input_defaults(source))
        write_manifest(tmp, result)
    return out
