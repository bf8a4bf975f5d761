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
import onnx_graphsurgeon as gs

from graphlens.architectures import Architecture
from graphlens.rewrite.instrument import instrument_sites
from graphlens.rewrite.manifest_io import graph_io

DECODER_FILE = "decoder.onnx"
PAST_LAYOUT = ["batch", "n_key_value_heads", "past", "d_head"]


def build_decoder(model, arch: Architecture, cfg: dict, opset: int) -> tuple[gs.Graph, list[str], dict]:
    """The instrumented decoder graph of ``model`` (weights not yet processed: placeholders), its hook
    names, and its initializers' tensors."""
    from graphlens.export.to_onnx import export_decoder

    proto, weights = export_decoder(model, arch, cfg, opset=opset)
    graph = gs.import_onnx(proto)
    hooks = instrument_sites(graph, cfg)
    return graph, hooks, weights


def write_decoder(decoder: onnx.ModelProto, hooks: list[str], folder: Path, shared: bool) -> dict:
    """Write ``decoder.onnx`` in ``folder``; returns the manifest's ``decoder`` entry. ``shared``: its
    weights are references into the model's external data file (else ``decoder`` holds them)."""
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
