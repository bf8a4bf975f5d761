"""The files of a bundle: names that stay inside the folder, and their sizes and SHA-256 in the manifest.

The manifest's ``files`` field is ``{"<file name>": {"size": int, "sha256": "<hex>"}}`` for every file of
the bundle except ``graphlens.json``. Loading checks the sizes (cheap: one ``stat`` per file);
``graphlens verify`` and ``from_pretrained(..., verify=True)`` check the hashes too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from graphlens.errors import BundleError

MANIFEST = "graphlens.json"
_CHUNK = 1 << 22


def inside(folder: Path, name, field: str) -> Path:
    """``folder / name`` for a plain file name that stays in ``folder``; else a BundleError naming ``field``.

    Refused: non-strings, empty names, separators, ``.``/``..``, absolute paths, and symlinks whose
    target is outside the folder.
    """
    bad = (
        not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
        or "\0" in name or os.path.isabs(name) or (len(name) > 1 and name[1] == ":")
    )
    if bad:
        raise BundleError(
            f"{folder / MANIFEST}: {field} must be a plain file name inside the bundle folder, got {name!r}"
        )
    path = folder / name
    if path.is_symlink():
        root = folder.resolve()
        target = path.resolve()
        if root not in target.parents:
            raise BundleError(f"{folder / MANIFEST}: {field} {name!r} is a symlink that leaves the bundle folder")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """``{"<name>": {"size", "sha256"}}`` of every file in ``folder`` except the manifest (sorted by name)."""
    records = {}
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST:
            continue
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{path} is not a plain file; a bundle folder holds plain files only")
        records[path.name] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return records


def _records(folder: Path, manifest: dict) -> dict:
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{folder / MANIFEST}: 'files' must map file names to {{size, sha256}}")
    for name, record in files.items():
        inside(folder, name, "files")
        ok = isinstance(record, dict) and type(record.get("size")) is int and isinstance(record.get("sha256"), str)
        if not ok:
            raise BundleError(f"{folder / MANIFEST}: files[{name!r}] must be {{\"size\": int, \"sha256\": \"<hex>\"}}")
    return files


def check_sizes(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists exists with its recorded size (bundles of format version ≥ 2)."""
    for name, record in _records(folder, manifest).items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{folder} is damaged: {name} is missing; export or copy the bundle again")
        size = path.stat().st_size
        if size != record["size"]:
            raise BundleError(
                f"{folder} is damaged: {name} has {size} bytes, the manifest records {record['size']}; "
                f"export or copy the bundle again"
            )


def check_hashes(folder: Path, manifest: dict) -> list[str]:
    """Sizes, then SHA-256 of every listed file; raises naming the first damaged file. Returns the names checked."""
    check_sizes(folder, manifest)
    files = _records(folder, manifest)
    for name, record in files.items():
        if sha256(folder / name) != record["sha256"].lower():
            raise BundleError(
                f"{folder} is damaged: the SHA-256 of {name} differs from the manifest's; export or copy the bundle again"
            )
    return list(files)
