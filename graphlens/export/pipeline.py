"""``graphlens export``: HF model → instrumented, processed ONNX bundle, written atomically."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import onnx
import onnx_graphsurgeon as gs

import graphlens
from graphlens.architectures import architecture_for
from graphlens.bundle import (
    EXTERNAL_DATA_FILE,
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    save_model,
    write_manifest,
    writing_bundle,
)
from graphlens.export.source import load_hf_config, load_hf_model, save_tokenizer
from graphlens.rewrite.apply_weights import apply_processing
from graphlens.rewrite.instrument import (
    PATCH_SITE_CHOICES,
    has_patch_inputs,
    instrument_sites,
    with_input_defaults,
)
from graphlens.rewrite.manifest_io import graph_io, hook_entries
from graphlens.rewrite.mask_inputs import manifest_defaults, with_mask_defaults
from graphlens.rewrite.weights import Processing



def _stderr_progress(step: int, total: int, message: str) -> None:
    print(f"[{step}/{total}] {message}", file=sys.stderr, flush=True)


def _forward_order(hooks: list[str], arch, cfg: dict) -> list[str]:
    """The graph's hooks in TransformerLens' forward order (graph order interleaves parallel blocks)."""
    expected = arch.hook_names(cfg["n_layers"])
    if set(hooks) != set(expected):
        raise RuntimeError(
            f"the {arch.name} adapter declares sites the export did not mark, or the reverse: "
            f"missing {sorted(set(expected) - set(hooks))[:5]}, unexpected {sorted(set(hooks) - set(expected))[:5]}"
        )
    return expected


def default_output_dir(source: str) -> Path:
    return Path("models") / Path(source.rstrip("/")).name


def export_bundle(
    source: str,
    out_dir: str | Path | None = None,
    processing: Processing = Processing(),
    dtype: str = "float32",
    opset: int = 18,
    external_data: bool | None = None,
    overwrite: bool = True,
    decoder: bool = True,
    progress: Callable[[int, int, str], None] | None = _stderr_progress,
    patch_sites: str = "all",
) -> Path:
    """Export ``source`` (hub id or local HF folder) to a bundle folder and return its path.

    ``external_data``: None stores weights in ``model.onnx.data`` when a decoder is written (both graphs
    read that one copy) or when they are large; False keeps a single-file ``model.onnx``.
    ``patch_sites``: which sites get ``.patch``/``.patch_mask``/``.add`` inputs: "all", "resid"
    (residual stream sites only) or "none" (every site is still an output).
    ``decoder``: also write ``decoder.onnx``, the KV-cache graph generation runs (manifest key "decoder").
    """
    report = progress or (lambda *a: None)
    if patch_sites not in PATCH_SITE_CHOICES:
        raise ValueError(f"patch_sites must be one of {', '.join(PATCH_SITE_CHOICES)}; got {patch_sites!r}")
    out = Path(out_dir) if out_dir is not None else default_output_dir(source)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --force) or another output folder")
    steps, started = 6, time.perf_counter()

    report(1, steps, f"loading {source}")
    hf_config = load_hf_config(source)
    arch = architecture_for(hf_config)
    cfg = arch.config_from_hf(hf_config)
    model = load_hf_model(source, dtype)

    report(2, steps, f"exporting to ONNX with torch.onnx ({arch.name}, {cfg['n_layers']} layers)")
    from graphlens.export.to_onnx import export_plain

    proto = export_plain(model, arch, cfg, opset=opset)
    if decoder:
        from graphlens.export.decoder import build_decoder

        report(2, steps, "exporting the KV-cache decoder graph")
        decoder_proto, decoder_hooks = build_decoder(model, arch, cfg, processing, opset)
    del model

    report(3, steps, "adding hook outputs and patch/add inputs at every site")
    graph = gs.import_onnx(proto)
    hooks = _forward_order(instrument_sites(graph, cfg, patch_sites), arch, cfg)

    report(4, steps, f"processing weights ({', '.join(k for k, v in processing.as_dict().items() if v) or 'none'})")
    processed_cfg = apply_processing(graph, arch, cfg, processing)
    proto = with_mask_defaults(with_input_defaults(gs.export_onnx(graph)))
    proto.producer_name, proto.producer_version = "graphlens", graphlens.__version__

    report(5, steps, "checking the graph")
    onnx.checker.check_model(proto, full_check=False)

    model_io = graph_io(proto)
    model_io["inputs"] = manifest_defaults(model_io["inputs"])
    with writing_bundle(out) as tmp:
        report(6, steps, f"writing the bundle to {out}")
        # with a decoder, external data lets both graphs read one copy of the weights
        big = save_model(proto, tmp / MODEL_FILE, True if external_data is None and decoder else external_data)
        tokenizer_files = save_tokenizer(source, tmp)
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
            "external_data_file": EXTERNAL_DATA_FILE if big else None,
            **model_io,
            "hooks": hook_entries(hooks, processed_cfg, dtype, lambda name: has_patch_inputs(name, patch_sites)),
            "tokenizer_files": tokenizer_files,
        }
        if decoder:
            from graphlens.export.decoder import write_decoder

            manifest["decoder"] = write_decoder(decoder_proto, decoder_hooks, tmp, MODEL_FILE)
        write_manifest(tmp, manifest)
    report(steps, steps, f"done in {time.perf_counter() - started:.1f}s: {len(hooks)} hooks")
    return out
