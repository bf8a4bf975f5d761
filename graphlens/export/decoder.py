"""The bundle's KV-cache decoder graph: export, instrument and process it like ``model.onnx``, write it.

``decoder.onnx`` runs one generation step: the hooks see only the new positions (as TransformerLens
with a KV cache) and have the same names, patch/add inputs and outputs as in ``model.onnx``.
When ``model.onnx`` keeps its weights in ``model.onnx.data``, the decoder's initializers point into
that same file (no second copy on disk); otherwise the decoder holds its own copy of the weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from graphlens.architectures import Architecture
from graphlens.rewrite.apply_weights import apply_processing
from graphlens.rewrite.instrument import instrument_sites, with_input_defaults
from graphlens.rewrite.manifest_io import graph_io
from graphlens.rewrite.weights import Processing

DECODER_FILE = "decoder.onnx"
PAST_LAYOUT = ["batch", "n_key_value_heads", "past", "d_head"]


def build_decoder(model, arch: Architecture, cfg: dict, processing: Processing, opset: int) -> tuple[onnx.ModelProto, list[str]]:
    """The instrumented, processed decoder graph of ``model`` and its hook names."""
    from graphlens.export.to_onnx import export_decoder

    graph = gs.import_onnx(export_decoder(model, arch, cfg, opset=opset))
    hooks = instrument_sites(graph, cfg)
    apply_processing(graph, arch, cfg, processing)
    return with_input_defaults(gs.export_onnx(graph)), hooks


def _point_at_model_data(decoder: onnx.ModelProto, model_file: Path) -> int:
    """Make the decoder's initializers that equal one stored in the model's external data refer to it."""
    model = onnx.load(str(model_file), load_external_data=False)
    external = {i.name: i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    if not external:
        return 0
    shared = 0
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
        shared += 1
    return shared


def write_decoder(decoder: onnx.ModelProto, hooks: list[str], folder: Path, model_file: str) -> dict:
    """Write ``decoder.onnx`` next to ``model_file`` in ``folder``; returns the manifest's ``decoder`` entry."""
    shared = _point_at_model_data(decoder, folder / model_file)
    onnx.save_model(decoder, folder / DECODER_FILE)
    n_layers = sum(1 for i in decoder.graph.input if i.name.endswith(".key") and i.name.startswith("past_key_values."))
    return {
        "file": DECODER_FILE,
        **graph_io(decoder),
        "past_inputs": "past_key_values.{layer}.key / past_key_values.{layer}.value",
        "present_outputs": "present.{layer}.key / present.{layer}.value",
        "past_layout": PAST_LAYOUT,
        "n_layers": n_layers,
        "attention_mask": "[batch, past+new], 1 = attend, 0 = padding (never attended; zero positional embedding)",
        "position_ids": "[batch, new]: cumsum(attention_mask) - 1, clipped at 0, for the new positions",
        "hooks": "same names, shapes and patch/add inputs as the model graph, over the new positions "
                 "(attention scores/pattern: [batch, n_heads, new, past+new])",
        "hook_names": hooks,
        "weights": "shared with the model's external data file" if shared else "own copy inside decoder.onnx",
    }
