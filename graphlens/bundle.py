"""The bundle folder and its manifest, ``graphlens.json`` — the contract with non-Python consumers.

Format version 2 (version 1 bundles still load, with a warning that they carry no hashes).
``graphlens/schema/graphlens.schema.json`` defines every field (``write_manifest`` validates against it
when jsonschema is installed); ``bundle_files`` (sizes, hashes, path rules), ``bundle_check`` (manifest
and graph checks) and ``bundle_write`` (safe, atomic writing) do the work.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import onnx
from graphlens.bundle_check import check_manifest
from graphlens.bundle_files import check_hashes, check_sizes, file_records
from graphlens.bundle_write import check_destination, writing_bundle  # noqa: F401  (re-exported)
from graphlens.errors import BundleError, BundleWarning, InputError

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
    """The manifest of bundle ``path``, checked: well formed, file names inside the folder, file sizes.

    A version-1 manifest (no ``files`` record) loads with a ``BundleWarning``.
    """
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        if not path.exists():
            raise BundleError(f"{path} does not exist; give a bundle folder (create one with `graphlens export`)")
        raise BundleError(f"{path} is not a graphlens bundle (no {MANIFEST}); create one with `graphlens export`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{file} is not valid JSON ({err}); export the bundle again") from None
    except OSError as err:
        raise BundleError(f"cannot read {file}: {err.strerror or err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{file} is not a graphlens manifest (format={found!r})")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise BundleError(
            f"{file} has format version {version}, newer than this graphlens reads ({FORMAT_VERSION}); upgrade graphlens"
        )
    check_manifest(path, manifest)
    if version >= 2 or "files" in manifest:
        check_sizes(path, manifest)
    else:
        warnings.warn(f"{path} is a format-version-{version} bundle: it records no file sizes or hashes, so damage "
                      f"cannot be detected; export it again", BundleWarning, stacklevel=2)
    return manifest


def verify_bundle(path: str | Path) -> list[str]:
    """Check every file's size and SHA-256 against the manifest; returns the names checked.

    Raises a BundleError naming the first damaged file, or saying that a version-1 bundle has no hashes.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BundleWarning)
        manifest = read_manifest(path)
    if "files" not in manifest:
        raise BundleError(f"{path} is a format-version-{manifest['format_version']} bundle with no hashes to check; "
                          f"export it again")
    return check_hashes(path, manifest)


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Write ``graphlens.json`` last: its ``files`` field records the size and SHA-256 of every other file.
    The manifest is checked against the schema first."""
    from graphlens.schema import validate_manifest

    path = Path(path)
    manifest = {**manifest, "format_version": FORMAT_VERSION, "files": file_records(path)}
    validate_manifest(manifest, f"the manifest for {path}")
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path / MANIFEST)


def derived_bundle_paths(source: str | os.PathLike, out: str | os.PathLike, overwrite: bool) -> tuple[Path, Path]:
    """``(source, out)`` as Paths for a bundle made from another one, after checking that ``out`` may be
    written (``bundle_write.check_destination``) and is not the source."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise InputError(f"write the new bundle to another folder than its source {source}")
    check_destination(out, overwrite)
    return source, out


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
