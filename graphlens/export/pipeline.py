"""``graphlens export``: HF model → instrumented, processed ONNX bundle, written atomically."""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

import graphlens
from graphlens.architectures import architecture_for
from graphlens.architectures.generic import GENERIC, generic_for
from graphlens.bundle import (
    EXTERNAL_DATA_FILE,
    EXTERNAL_DATA_THRESHOLD,
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    check_destination,
    write_manifest,
    writing_bundle,
)
from graphlens.dtypes import dtype_name
from graphlens.errors import ExportError, InputError
from graphlens.export.decoder import DECODER_FILE
from graphlens.export.external import ExportWeights, WeightsFile, inline_weights, point_at_weights
from graphlens.export.quiet import quietly
from graphlens.export.source import load_hf_config, load_hf_model, save_tokenizer
from graphlens.rewrite.apply_weights import bypass_removed, missing_param_error
from graphlens.rewrite.instrument import (
    PATCH_SITE_CHOICES,
    instrument_sites,
    with_input_defaults,
)
from graphlens.rewrite.manifest_io import graph_io, hook_entries, normalise_dim_labels
from graphlens.rewrite.weights import Processing, process_stream
from graphlens.runtime.tokenizer import tokenizer_entry
from graphlens.rewrite.mask_inputs import manifest_defaults, with_mask_defaults


def _stderr_progress(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)


def _forward_order(hooks: list[str], arch, cfg: dict) -> list[str]:
    """The graph's hooks in TransformerLens' forward order (graph order interleaves parallel blocks)."""
    expected = arch.hook_names(cfg["n_layers"])
    if set(hooks) != set(expected):
        raise ExportError(
            f"the {arch.name} adapter declares sites the export did not mark, or the reverse: "
            f"missing {sorted(set(expected) - set(hooks))[:5]}, unexpected {sorted(set(hooks) - set(expected))[:5]}"
        )
    return expected


def default_output_dir(source: str) -> Path:
    return Path("models") / Path(source.rstrip("/")).name


def _write_weights(weights: ExportWeights, arch, cfg: dict, processing: Processing, out: WeightsFile) -> tuple[dict, set[str]]:
    """Process ``weights`` part by part into ``out``, releasing each source tensor once its part is read;
    the initializers processing does not map (buffers, constants) are written as they are."""
    in_graphs = set(weights)

    def emit(name: str, value) -> None:
        if name in in_graphs:
            out.write(name, value)
        elif value.any():
            raise missing_param_error(name, arch)

    processed_cfg, removed = process_stream(weights, arch, cfg, processing, emit, release=weights.release)
    for name in weights:
        if name not in removed:
            out.write(name, weights[name])
        weights.release(name)
    return processed_cfg, removed


def _finish_graph(graph: gs.Graph, removed: set[str], weights: WeightsFile) -> onnx.ModelProto:
    """The folded norms bypassed, substitution defaults added, placeholders pointed into ``weights``."""
    bypass_removed(graph, removed)
    proto = with_input_defaults(gs.export_onnx(graph))
    normalise_dim_labels(proto)
    point_at_weights(proto, weights)
    proto.producer_name, proto.producer_version = "graphlens", graphlens.__version__
    return proto


@quietly
def export_bundle(
    source: str,
    out_dir: str | Path | None = None,
    processing: Processing = Processing(),
    dtype: object = "float32",
    opset: int = 18,
    external_data: bool | None = None,
    overwrite: bool = False,
    decoder: bool = True,
    progress: Callable[[int, int, str], None] | None = _stderr_progress,
    patch_sites: str = "all",
    quantize: str | None = None,
    gradients: bool = False,
) -> Path:
    """Export ``source`` (hub id or local HF folder) to a bundle folder and return its path.

    ``dtype``: "float32", "float16" or "bfloat16" (or the torch dtype); the HF weights are loaded in it
    directly. Memory: the HF model once, plus one part of the weights while it is processed; the
    graphs never hold weight bytes, and each weight is written once for both graphs.
    ``external_data``: None stores weights in ``model.onnx.data`` when a decoder is written (both graphs
    read that one copy) or when they are large; False keeps a single-file ``model.onnx``.
    ``patch_sites``: which sites get ``.patch``/``.patch_mask``/``.add`` inputs: "all", "resid"
    (residual stream sites only) or "none" (every site is still an output).
    ``decoder``: also write ``decoder.onnx``, the KV-cache graph generation runs (manifest key "decoder").
    ``overwrite``: replace a bundle already at ``out_dir`` (anything else there is never replaced; see
    ``bundle_write``).
    ``quantize``: "int4" or "int8" writes a quantized bundle (``graphlens.quantize``) of the processed weights.
    ``gradients``: also write ``backward.onnx``, forward + backward with ``<hook>_grad`` outputs (``graphlens.grad.bundle_file``).
    """
    if quantize is not None and gradients:
        raise InputError("gradients of a quantized bundle are not supported (MatMulNBits has no gradient rule): "
                         "export the float bundle with gradients")
    if quantize is not None:
        from graphlens.quantize.bundle import export_quantized

        return export_quantized(source, out_dir if out_dir is not None else default_output_dir(source), quantize,
                                overwrite=overwrite, progress=progress, processing=processing, dtype=dtype, opset=opset,
                                external_data=external_data, decoder=decoder, patch_sites=patch_sites)
    report = progress or (lambda *a: None)
    if patch_sites not in PATCH_SITE_CHOICES:
        raise InputError(f"patch_sites must be one of {', '.join(PATCH_SITE_CHOICES)}; got {patch_sites!r}")
    dtype = dtype_name(dtype)
    out = Path(out_dir) if out_dir is not None else default_output_dir(source)
    check_destination(out, overwrite)  # before the slow part
    steps, started = 6, time.perf_counter()

    report(1, steps, f"loading {source}")
    hf_config = load_hf_config(source)
    arch = architecture_for(hf_config)
    cfg = arch.config_from_hf(hf_config) if arch is not GENERIC else None  # a variant's check before the weights
    model = load_hf_model(source, dtype)
    if cfg is None:
        from graphlens.export.discover import describe, discover

        layout, cfg = discover(model, hf_config)
        arch = generic_for(layout, cfg)
        report(1, steps, f"no graphlens adapter for {', '.join(hf_config.get('architectures') or [])}: "
                         f"the generic adapter placed {describe(layout)}")

    report(2, steps, f"exporting to ONNX with torch.onnx ({arch.name} adapter, {cfg['n_layers']} layers)")
    from graphlens.export.to_onnx import export_plain

    weights = ExportWeights()
    proto, tensors = export_plain(model, arch, cfg, opset=opset)
    weights.add(tensors)
    if decoder:
        from graphlens.export.decoder import build_decoder

        report(2, steps, "exporting the KV-cache decoder graph")
        decoder_graph, decoder_hooks, tensors = build_decoder(model, arch, cfg, opset, patch_sites)
        weights.add(tensors)
    del model, tensors
    gc.collect()  # the weights are now referenced by ``weights`` alone: released as they are written

    report(3, steps, "adding hook outputs and patch/add inputs at every site")
    graph = gs.import_onnx(proto)
    del proto
    hooks = _forward_order(instrument_sites(graph, cfg, patch_sites), arch, cfg)

    with writing_bundle(out, overwrite) as tmp:
        report(4, steps, f"processing weights ({', '.join(k for k, v in processing.as_dict().items() if v) or 'none'})"
                         f" into {EXTERNAL_DATA_FILE}")
        data = WeightsFile(tmp / EXTERNAL_DATA_FILE)
        try:
            processed_cfg, removed = _write_weights(weights, arch, cfg, processing, data)
        finally:
            data.close()
        report(5, steps, f"writing the graphs to {out}")
        # with a decoder, external data lets both graphs read one copy of the weights
        external = external_data if external_data is not None else decoder or data.size > EXTERNAL_DATA_THRESHOLD
        protos = {MODEL_FILE: with_mask_defaults(_finish_graph(graph, removed, data))}
        if decoder:
            protos[DECODER_FILE] = _finish_graph(decoder_graph, removed, data)
        if not external:
            inline_weights(list(protos.values()), data)
        onnx.save_model(protos[MODEL_FILE], tmp / MODEL_FILE)
        report(6, steps, "checking the graph")
        onnx.checker.check_model(str(tmp / MODEL_FILE), full_check=False)  # by path: never serialised whole
        tokenizer_files = save_tokenizer(source, tmp)
        model_io = graph_io(protos[MODEL_FILE])
        model_io["inputs"] = manifest_defaults(model_io["inputs"])
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "graphlens_version": graphlens.__version__,
            "architecture": arch.name,
            "source": {"model": source, "hf_architectures": hf_config.get("architectures")},
            "config": processed_cfg,
            "processing": processing.as_dict(),
            "dtype": dtype,
            "opset": opset,
            "model_file": MODEL_FILE,
            "external_data_file": EXTERNAL_DATA_FILE if external else None,
            **model_io,
            "hooks": hook_entries(hooks, processed_cfg, dtype, protos[MODEL_FILE]),
            "tokenizer_files": tokenizer_files,
            "tokenizer": tokenizer_entry(tmp),
        }
        if decoder:
            from graphlens.export.decoder import write_decoder

            manifest["decoder"] = write_decoder(protos[DECODER_FILE], decoder_hooks, tmp, processed_cfg, dtype, shared=external)
        if gradients:
            from graphlens.grad.bundle_file import write_backward

            report(6, steps, "writing the gradient graph")
            manifest["backward"] = write_backward(tmp, MODEL_FILE, shared=external)
        write_manifest(tmp, manifest)
    report(steps, steps, f"done in {time.perf_counter() - started:.1f}s: {len(hooks)} hooks")
    return out
