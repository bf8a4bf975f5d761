"""The bundle folder and its manifest, ``graphlens.json`` — the contract with non-Python consumers.

Format version 1. See README "Bundle format" for every field.
"""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "graphlens-bundle"
FORMAT_VERSION = 1
MANIFEST = "graphlens.json"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx.data"


class BundleError(ValueError):
    """A folder that is not a usable graphlens bundle."""


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
    (Path(path) / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
