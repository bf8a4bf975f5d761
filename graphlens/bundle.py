"""The bundle folder and its manifest, ``graphlens.json`` — the contract with non-Python consumers.

Format version 2 (version 1 still loads). ``graphlens/schema/graphlens.schema.json`` defines every
field; ``write_manifest`` validates against it (when jsonschema is installed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
from graphlens.errors import BundleError, InputError

FORMAT = "graphlens-bundle"
FORMAT_VERSION = 2
MANIFEST = "graphlens.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"
# Above this size the weights go to model.onnx.data (protobuf cannot hold more than 2 GB).
EXTERNAL_DATA_THRESHOLD = 1 << 30


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path} is not a graphlens bundle (no {MANIFEST}); create one with `graphlens export`")
    manifest = json.loads(file.read_text())
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{file} is not a graphlens manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BundleError(
            f"{file} has format version {manifest['format_version']}, newer than this graphlens reads "
            f"({FORMAT_VERSION}); upgrade graphlens"
        )
    return manifest


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write ``graphlens.json`` in ``path``, after checking it against the schema."""
    from graphlens.schema import validate_manifest

    validate_manifest(manifest, f"the manifest for {path}")
    (Path(path) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def derived_bundle_paths(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """``(source, out)`` as Paths for a bundle made from another one, after checking that ``out`` may be written."""
    source, out = Path(source), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --force) or another output folder")
    if out.resolve() == source.resolve():
        raise InputError(f"write the new bundle to another folder than its source {source}")
    return source, out


@contextlib.contextmanager
def writing_bundle(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` when the block succeeds (removed if it fails).

    Nothing half-written is ever left at ``out``.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        _usual_permissions(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _usual_permissions(folder: Path) -> None:
    """The modes a plain mkdir/open would have given (mkdtemp and some writers make owner-only ones)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def save_model(proto: onnx.ModelProto, path: Path, external_data: bool | None = None) -> bool:
    """Write ``proto`` to ``path``; weights go to EXTERNAL_DATA_FILE beside it when ``external_data``
    (None: when the model is over EXTERNAL_DATA_THRESHOLD). Returns whether they did."""
    external = proto.ByteSize() > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if external:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    return external
