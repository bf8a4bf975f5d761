"""The bundle's KV-cache decoder graph: export, instrument and process it like ``model.onnx``, write it.

``decoder.onnx`` runs one generation step: the hooks see only the new positions (as TransformerLens
with a KV cache) and have the same names, patch/add inputs and outputs as in ``model.onnx``.
When ``model.onnx`` keeps its weights in ``model.onnx.data``, the decoder's initializers point into
that same file (both graphs share their parameters by name, and each is written once); otherwise the
decoder holds its own copy of the weights.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from graphlens.architectures import Architecture
from graphlens.rewrite.instrument import instrument_sites
from graphlens.rewrite.manifest_io import graph_io, hook_entries

DECODER_FILE = "decoder.onnx"
PAST_LAYOUT = ["batch", "n_key_value_heads", "past", "d_head"]


def build_decoder(model, arch: Architecture, cfg: dict, opset: int,
                  patch_sites: str = "all") -> tuple[gs.Graph, list[str], dict]:
    """The instrumented decoder graph of ``model`` (weights not yet processed: placeholders), its hook
    names, and its initializers' tensors. ``patch_sites`` chooses the sites with substitution inputs, as
    for ``model.onnx``."""
    from graphlens.export.to_onnx import export_decoder

    proto, weights = export_decoder(model, arch, cfg, opset=opset)
    graph = gs.import_onnx(proto)
    hooks = instrument_sites(graph, cfg, patch_sites)
    return graph, hooks, weights


def point_at_model_data(decoder: onnx.ModelProto, model_file: Path) -> bool:
    """Make the decoder's initializers that equal one stored in the model's external data refer to it
    (for a decoder built from a finished bundle, e.g. by ``graphlens deploy``); returns whether any did."""
    model = onnx.load(str(model_file), load_external_data=False)
    external = {i.name: i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    shared = False
    for init in decoder.graph.initializer:
        ref = external.get(init.name)
        if ref is None or list(ref.dims) != list(init.dims) or ref.data_type != init.data_type:
            continue
        stored = numpy_helper.to_array(ref, base_dir=str(model_file.parent))
        if not np.array_equal(stored, numpy_helper.to_array(init)):
            continue
        init.ClearField("raw_data")
        del init.external_data[:]
        init.external_data.extend(ref.external_data)
        init.data_location = onnx.TensorProto.EXTERNAL
        shared = True
    return shared


def write_decoder(decoder: onnx.ModelProto, hooks: list[str], folder: Path, cfg: dict, dtype: str, shared: bool,
                  defaults: dict[str, dict] | None = None) -> dict:
    """Write ``decoder.onnx`` in ``folder``; returns the manifest's ``decoder`` entry. ``shared``: its
    weights are references into the model's external data file (else ``decoder`` holds them).
    ``defaults``: as in ``manifest_io.graph_io`` (a deployment's required inputs)."""
    onnx.save_model(decoder, folder / DECODER_FILE)
    return decoder_entry(decoder, hooks, cfg, dtype, shared, defaults)


def decoder_entry(decoder: onnx.ModelProto, hooks: list[str], cfg: dict, dtype: str, shared_weights: bool,
                  defaults: dict[str, dict] | None = None) -> dict:
    """The manifest's ``decoder`` entry: its inputs/outputs, the cache per layer, its hooks, as data."""
    io = graph_io(decoder, defaults)
    n_layers = sum(1 for i in decoder.graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key"))
    past = next(i for i in io["inputs"] if i["name"] == "past_key_values.0.key") if n_layers else None
    return {
        "file": DECODER_FILE,
        **io,
        "n_layers": n_layers,
        "layers": [
            {"layer": layer, "past_key": f"past_key_values.{layer}.key", "past_value": f"past_key_values.{layer}.value",
             "present_key": f"present.{layer}.key", "present_value": f"present.{layer}.value"}
            for layer in range(n_layers)
        ],
        "past_layout": PAST_LAYOUT,
        # the first step: every past input of this shape, with past = 0
        "empty_past": {"dtype": past["dtype"], "shape": [0 if d == "past" else d for d in past["shape"]]} if past else None,
        "attention_mask": {"shape": ["batch", "past + pos"], "dtype": "int64", "attend": 1, "padding": 0},
        "position_ids": {"shape": ["batch", "pos"], "dtype": "int64",
                         "rule": "cumsum(attention_mask, axis=1) - 1, clipped at 0; the last pos columns"},
        "hooks": hook_entries(hooks, cfg, dtype, decoder, defaults),
        "hook_names": hooks,
        "weights": "shared with the model's external data file" if shared_weights else "own copy inside decoder.onnx",
    }
