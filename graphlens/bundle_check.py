"""Is a manifest well formed, and does it describe the graphs beside it? Checked at load, before ONNX Runtime.

``check_manifest``: the fields readers rely on exist with the right types, and every file name stays
inside the bundle (``bundle_files.inside``). ``check_graph``: the model (or decoder) graph has every
listed hook as an output, output shapes and initializer shapes agree with the config, and its external
weights are the manifest's data file, in range. A failure is a ``BundleError`` naming the field or file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from graphlens.bundle_files import inside
from graphlens.errors import BundleError
from graphlens.sites import concrete_shape, kind_of

_CONFIG_INTS = ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx")
_LAYER_IN_NAME = re.compile(r"(?:^|\.)(?:h|layers|layer)\.(\d+)\.")


def _fail(folder: Path, message: str) -> BundleError:
    return BundleError(f"{folder / 'graphlens.json'}: {message}; export the bundle again")


def _need(folder: Path, container: dict, key: str, kind, where: str = ""):
    value = container.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _fail(folder, f"field {where}{key} must be {names}, got {value!r:.60}")
    return value


def check_manifest(folder: Path, manifest: dict) -> None:
    """The fields every reader uses, with their types; file names confined to the folder."""
    if not isinstance(manifest, dict):
        raise _fail(folder, "the manifest must be a JSON object")
    _need(folder, manifest, "format_version", int)
    _need(folder, manifest, "architecture", str)
    dtype = _need(folder, manifest, "dtype", str)
    if dtype != "bfloat16":
        try:
            np.dtype(dtype)
        except TypeError:
            raise _fail(folder, f"field dtype {dtype!r} is not a numpy dtype name") from None
    _need(folder, manifest, "processing", dict)
    config = _need(folder, manifest, "config", dict)
    for key in _CONFIG_INTS:
        if _need(folder, config, key, int, "config.") <= 0:
            raise _fail(folder, f"config.{key} must be positive, got {config[key]}")
    inside(folder, _need(folder, manifest, "model_file", str), "model_file")
    if manifest.get("external_data_file") is not None:
        inside(folder, manifest["external_data_file"], "external_data_file")
    for name in _need(folder, manifest, "tokenizer_files", list) if "tokenizer_files" in manifest else []:
        inside(folder, name, "tokenizer_files")
    for field in ("inputs", "outputs"):
        for i, io in enumerate(_need(folder, manifest, field, list)):
            if not isinstance(io, dict) or not isinstance(io.get("name"), str):
                raise _fail(folder, f"{field}[{i}] must be an object with a name")
    hooks = _need(folder, manifest, "hooks", list)
    for i, hook in enumerate(hooks):
        if not isinstance(hook, dict):
            raise _fail(folder, f"hooks[{i}] must be an object")
        _need(folder, hook, "name", str, f"hooks[{i}].")
        _need(folder, hook, "shape", list, f"hooks[{i}].")
        _need(folder, hook, "inputs", dict, f"hooks[{i}].")
    decoder = manifest.get("decoder")
    if decoder is not None:
        if not isinstance(decoder, dict):
            raise _fail(folder, "field decoder must be an object")
        inside(folder, _need(folder, decoder, "file", str, "decoder."), "decoder.file")
        if not all(isinstance(n, str) for n in _need(folder, decoder, "hook_names", list, "decoder.")):
            raise _fail(folder, "field decoder.hook_names must list hook names (strings)")
        if _need(folder, decoder, "n_layers", int, "decoder.") != config["n_layers"]:
            raise _fail(folder, f"decoder.n_layers={decoder['n_layers']} but config.n_layers={config['n_layers']}")
        unknown = set(decoder["hook_names"]) - {h["name"] for h in hooks}
        if unknown and hooks:
            raise _fail(folder, f"decoder hooks the model lacks: {sorted(unknown)[:3]}")


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _shape_clash(declared: list, expected: list) -> bool:
    """Fixed dims that disagree (symbolic or unknown dims agree with anything)."""
    if len(declared) != len(expected):
        return True
    return any(isinstance(e, int) and isinstance(d, int) and d and d != e for d, e in zip(declared, expected))


def check_graph(folder: Path, manifest: dict, proto: onnx.ModelProto, file: str, hooks: list[str]) -> None:
    """``proto`` (read from ``file`` without its external data) is the graph ``manifest`` describes.

    ``hooks``: the hook names this graph must output.
    """
    config = manifest["config"]
    where = f"{folder / file} does not match {folder / 'graphlens.json'}"
    outputs = {o.name: o for o in proto.graph.output}
    missing = [h for h in hooks if h not in outputs]
    if missing:
        raise BundleError(f"{where}: hooks listed but not graph outputs: {', '.join(missing[:3])}; export the bundle again")
    shapes = {}
    for h in manifest["hooks"]:  # what the runtime will assume: the shapes the config implies
        try:
            shapes[h["name"]] = concrete_shape(kind_of(h["name"]).dims, config)
        except (KeyError, ValueError, TypeError):
            raise BundleError(f"{folder / 'graphlens.json'}: hooks lists {h['name']!r}, which is not a hook name, "
                              f"or config lacks a size it needs; export the bundle again") from None
    vocab_out = config.get("d_vocab_out") if config.get("d_vocab_out", -1) != -1 else config["d_vocab"]
    shapes["logits"] = ["batch", "pos", vocab_out]
    for name, shape in shapes.items():
        if name in outputs and _shape_clash(_dims(outputs[name]), shape):
            raise BundleError(f"{where}: output {name} has shape {_dims(outputs[name])}, the manifest says {shape}")
    layers = {int(m[1]) for i in proto.graph.initializer if (m := _LAYER_IN_NAME.search(i.name))}
    if layers and max(layers) + 1 != config["n_layers"]:
        raise BundleError(f"{where}: the graph has weights for {max(layers) + 1} layers, config.n_layers is {config['n_layers']}")
    _check_external_data(folder, manifest, proto, where)


def _check_external_data(folder: Path, manifest: dict, proto: onnx.ModelProto, where: str) -> None:
    data_file = manifest.get("external_data_file")
    size = (folder / data_file).stat().st_size if data_file and (folder / data_file).is_file() else None
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        if info.get("location") != data_file:
            raise BundleError(f"{where}: weight {init.name} is stored in {info.get('location')!r}, "
                              f"not the bundle's external_data_file {data_file!r}")
        if size is None:
            raise BundleError(f"{folder} is damaged: {data_file} is missing")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > size:
            raise BundleError(f"{folder} is damaged: {data_file} has {size} bytes, weight {init.name} ends at byte {end}")


def load_graph(folder: Path, manifest: dict, file: str, field: str, hooks: list[str],
               read_weights: bool = True) -> onnx.ModelProto:
    """Read graph ``file`` of the bundle, check it against the manifest, then read its external weights
    (``read_weights=False``: they stay references into the data file, e.g. for ``MappedWeights``).

    Anything ONNX cannot parse becomes a BundleError naming the file.
    """
    path = inside(folder, file, field)
    if not path.is_file():
        raise BundleError(f"{folder} is damaged: {file} ({field}) is missing; export the bundle again")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf DecodeError, OSError, ...: the file is not a model
        raise BundleError(f"{path} is not a readable ONNX model ({type(err).__name__}); export the bundle again") from err
    check_graph(folder, manifest, proto, file, hooks)
    if read_weights:
        read_external_weights(proto, folder, path)
    return proto


def read_external_weights(proto: onnx.ModelProto, folder: Path, path: Path | None = None) -> None:
    """Copy the external weights of ``proto`` (a graph of the bundle in ``folder``) into it."""
    from onnx.external_data_helper import load_external_data_for_model

    try:
        load_external_data_for_model(proto, str(folder))
    except Exception as err:
        raise BundleError(f"cannot read the weights of {path or folder} ({type(err).__name__}: {err}); "
                          f"export the bundle again") from err
