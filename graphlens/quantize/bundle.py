"""``graphlens quantize`` / ``export --quantize``: a bundle whose linear layers' weights are quantized.

The source bundle's graphs (``model.onnx`` and ``decoder.onnx``) are quantized one by one with the same
settings (``methods``); their quantized initializers have the same names and bytes, so each is written
once to the new ``model.onnx.data``, which both graphs read. Hooks, substitution inputs, the KV cache
and the tokenizer are unchanged; the manifest gains a ``quantization`` field.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import onnx
from onnx import numpy_helper

from graphlens.bundle import EXTERNAL_DATA_FILE, derived_bundle_paths, read_manifest, write_manifest, writing_bundle
from graphlens.bundle_check import load_graph
from graphlens.errors import ExportError, InputError, NotSupportedError
from graphlens.export.external import PENDING, WeightsFile, point_at_weights
from graphlens.quantize.methods import INT4_ACCURACY_LEVEL, INT4_BLOCK_SIZE, Settings, quantize_graph, settings_for


def _check_source(source: Path, manifest: dict, settings: Settings) -> None:
    if manifest.get("quantization"):
        raise InputError(f"{source} is quantized already ({manifest['quantization']['method']}); quantize its float "
                         f"source bundle instead")
    if "deployment" in manifest:
        raise InputError(f"{source} is a deployment; quantize its source bundle, then deploy that")
    if manifest["dtype"] != "float32":  # int8's DynamicQuantizeLinear takes float32 only; int4 untested beyond it
        raise NotSupportedError(f"quantizing a {manifest['dtype']} bundle is not supported; export it with "
                                f"--dtype float32 (the float weights quantization starts from)")


def _store_once(protos: list[onnx.ModelProto], data: WeightsFile) -> None:
    """Write every initializer of ``protos`` to ``data`` once by name (the graphs share them) and make
    each graph's copy a placeholder for it; an equal name with other bytes is an error."""
    digests: dict[str, bytes] = {}
    for proto in protos:
        for init in proto.graph.initializer:
            if init.data_type == onnx.TensorProto.STRING:
                continue
            array = numpy_helper.to_array(init)
            digest = hashlib.sha256(array.tobytes()).digest() + str((array.dtype, array.shape)).encode()
            if init.name not in digests:
                data.write(init.name, array)
                digests[init.name] = digest
            elif digests[init.name] != digest:
                raise ExportError(f"the quantized graphs hold different values for {init.name!r}")
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                init.ClearField(field)
            del init.external_data[:]
            entry = init.external_data.add()
            entry.key, entry.value = "location", PENDING
            init.data_location = onnx.TensorProto.EXTERNAL


def quantize_bundle(
    source: str | os.PathLike,
    out: str | os.PathLike,
    method: str = "int4",
    overwrite: bool = False,
    block_size: int = INT4_BLOCK_SIZE,
    accuracy_level: int = INT4_ACCURACY_LEVEL,
    progress: Callable[[str], None] | None = None,
    source_label: str | None = None,
) -> Path:
    """Write ``out``: bundle ``source`` with its linear layers quantized (``method`` "int4" or "int8",
    see ``graphlens.quantize.methods``); returns ``out``.

    ``block_size`` / ``accuracy_level``: MatMulNBits' settings for int4 (GenAI's CPU defaults 32 / 4).
    ``source_label``: what the manifest records as the source bundle (default: ``source``'s path).
    """
    report = progress or (lambda message: None)
    settings = settings_for(method, block_size, accuracy_level)
    source, out = derived_bundle_paths(source, out, overwrite)
    manifest = read_manifest(source)
    _check_source(source, manifest, settings)
    graphs = {manifest["model_file"]: [h["name"] for h in manifest["hooks"]]}
    decoder = manifest.get("decoder")
    if decoder:
        graphs[decoder["file"]] = decoder.get("hook_names") or [h["name"] for h in decoder["hooks"]]
    protos, records = {}, {}
    for file, hooks in graphs.items():
        report(f"quantizing {file} ({method})")
        proto = load_graph(source, manifest, file, "model_file" if file == manifest["model_file"] else "decoder.file", hooks)
        value_info = list(proto.graph.value_info)
        protos[file], records[file] = quantize_graph(proto, settings)
        del protos[file].graph.value_info[:]  # the quantizer's shape inference: not ours to keep
        protos[file].graph.value_info.extend(value_info)
    weights = records[manifest["model_file"]]
    if decoder and {r["name"] for r in records[decoder["file"]]} != {r["name"] for r in weights}:
        raise ExportError(f"{decoder['file']} and {manifest['model_file']} quantize different weights")

    with writing_bundle(out, overwrite) as tmp:
        report(f"writing {out}")
        data = WeightsFile(tmp / EXTERNAL_DATA_FILE)
        try:
            _store_once(list(protos.values()), data)
        finally:
            data.close()
        for file, proto in protos.items():
            point_at_weights(proto, data)
            onnx.save_model(proto, tmp / file)
        onnx.checker.check_model(str(tmp / manifest["model_file"]), full_check=False)
        for name in manifest.get("tokenizer_files") or []:
            shutil.copy2(source / name, tmp / name)
        result = {k: v for k, v in manifest.items() if k not in ("files", "backward")}  # backward.onnx: float only
        result["external_data_file"] = EXTERNAL_DATA_FILE
        if decoder:
            result["decoder"] = {**decoder, "weights": "shared with the model's external data file"}
        result["quantization"] = {**settings.as_dict(), "source_bundle": source_label or str(source),
                                  "weights": weights}
        write_manifest(tmp, result)
    return out


def export_quantized(source: str, out_dir: str | os.PathLike, method: str, overwrite: bool = False,
                     progress: Callable[[int, int, str], None] | None = None, **export_options) -> Path:
    """``export_bundle(source, out_dir, ...)`` then ``quantize_bundle``: the float bundle is written to a
    temporary folder beside ``out_dir`` and removed once the quantized one is in place."""
    from graphlens.bundle import check_destination
    from graphlens.export.pipeline import export_bundle

    settings_for(method)  # a bad method fails before the slow part
    out = Path(out_dir)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.float-", dir=out.parent) as tmp:
        float_bundle = export_bundle(source, Path(tmp) / "bundle", progress=progress, **export_options)
        report = (lambda message: progress(1, 1, message)) if progress else None
        return quantize_bundle(float_bundle, out, method, overwrite=overwrite, progress=report,
                               source_label=f"export of {source}")
