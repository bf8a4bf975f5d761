"""``graphlens.intervene``: a bundle with an intervention spec compiled in, for shipping a steered model.

The result is a standalone bundle: the interventions are constants and plain ops at their sites,
and every substitution input is gone (as in an export with ``--patch-sites none``), so ONNX Runtime
can fold and fuse the whole graph. By default only ``logits`` remains an output.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx

from graphlens.bundle import (EXTERNAL_DATA_FILE, derived_bundle_paths, read_manifest, save_model, write_manifest,
                              writing_bundle)
from graphlens.bundle_check import load_graph
from graphlens.bundle_files import inside
from graphlens.rewrite.intervene import apply_interventions, load_spec, parse_spec
from graphlens.rewrite.manifest_io import graph_io, hook_entries
from graphlens.rewrite.mask_inputs import manifest_defaults
from graphlens.rewrite.specialise import specialise



def intervene(
    bundle: str | os.PathLike,
    spec,
    out: str | os.PathLike,
    keep_hooks: bool = False,
    overwrite: bool = False,
    value_root: str | os.PathLike | None = None,
) -> Path:
    """Write ``out``: ``bundle`` with ``spec`` (a JSON/YAML file or a list of entries) compiled in.

    ``keep_hooks``: keep every hook as a graph output (loadable for ``run_with_cache``); otherwise
    the graph has the same outputs as an unhooked export. ``overwrite``: replace a bundle already at
    ``out`` (the same rule as ``export``). ``value_file`` entries must lie in the spec file's folder
    (the current folder for a list spec) unless ``value_root`` names a wider folder.
    """
    bundle, out = derived_bundle_paths(bundle, out, overwrite)
    manifest = read_manifest(bundle)
    hooks = [h["name"] for h in manifest["hooks"]]
    entries, base = load_spec(spec)
    items = parse_spec(entries, hooks, manifest["config"], manifest["dtype"], base,
                       Path(value_root) if value_root is not None else base)

    proto = load_graph(bundle, manifest, manifest["model_file"], "model_file", hooks)
    apply_interventions(proto, items, manifest["config"], manifest["dtype"])
    model_outputs = [o["name"] for o in manifest["outputs"]]
    compiled = specialise(proto, model_outputs + (hooks if keep_hooks else []))
    compiled.producer_name, compiled.producer_version = proto.producer_name, proto.producer_version
    onnx.checker.check_model(compiled, full_check=False)

    compiled_io = graph_io(compiled)
    compiled_io["inputs"] = manifest_defaults(compiled_io["inputs"])
    with writing_bundle(out, overwrite) as tmp:
        model_file = manifest["model_file"]
        big = save_model(compiled, tmp / model_file)
        for name in manifest.get("tokenizer_files") or []:
            shutil.copy2(inside(bundle, name, "tokenizer_files"), tmp / name)
        kept = hooks if keep_hooks else []
        manifest = {
            **{k: v for k, v in manifest.items() if k not in ("decoder", "backward")},  # nor are these graphs
            "external_data_file": EXTERNAL_DATA_FILE if big else None,
            **compiled_io,
            "hooks": hook_entries(kept, manifest["config"], manifest["dtype"], compiled),
            "intervention": {"source_bundle": str(bundle), "entries": [i.describe() for i in items]},
        }
        write_manifest(tmp, manifest)
    return out
