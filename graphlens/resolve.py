"""``from_pretrained``'s sources: a bundle folder, or an HF folder / hub id exported on first use."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from graphlens.bundle import BundleError, is_bundle
from graphlens.rewrite.weights import Processing
from graphlens.errors import InputTypeError, MissingDependencyError


def cache_root() -> Path:
    return Path(os.environ.get("GRAPHLENS_CACHE", Path.home() / ".cache" / "graphlens"))


def _fingerprint(source: str) -> str:
    """Changes when a local source folder changes (so a stale export is not reused)."""
    path = Path(source)
    if not path.exists():
        return source
    stats = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())
    return json.dumps([str(path.resolve()), stats])


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_local(source: str) -> bool:
    """Is ``source`` meant as a local path rather than a hub id ("org/name")?

    Yes when it is absolute, starts with "." or "~", has more than one separator, is not a valid
    hub id, or its first component is a folder here (``models/gpt2`` when ``models/`` exists).
    """
    if os.path.isabs(source) or source.startswith((".", "~")) or not _HUB_ID.match(source):
        return True
    first = source.split("/")[0]
    return "/" in source and Path(first).is_dir()


def resolve_bundle(source: str | os.PathLike, processing: Processing, dtype: str | None) -> Path:
    """The bundle folder for ``source``; HF sources are exported into the cache once.

    A local path is looked at first (a missing one is an error at once, never a hub request).
    """
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError(f"give a bundle folder, an HF model folder or a hub id, not {type(source).__name__}")
    path = Path(source)
    if is_bundle(path):
        return path
    if path.exists() and not (path / "config.json").is_file():
        raise BundleError(
            f"{path} is neither a graphlens bundle (no graphlens.json) nor an HF model folder (no config.json)"
        )
    if not path.exists() and looks_local(str(source)):
        raise BundleError(f"{source} does not exist: give a bundle folder, an HF model folder or a hub id such as gpt2")
    key = hashlib.sha1(json.dumps([_fingerprint(str(source)), processing.as_dict(), dtype]).encode()).hexdigest()[:12]
    target = cache_root() / f"{re.sub(r'[^A-Za-z0-9._-]+', '--', str(source).strip('/'))[-60:]}-{key}"
    if is_bundle(target):
        return target
    try:
        from graphlens.export.pipeline import export_bundle
    except ImportError as err:
        raise MissingDependencyError(
            f"loading {source!r} needs an export first, which needs torch and transformers: "
            f"pip install 'graphlens[export]' (or export elsewhere and load the bundle folder)"
        ) from err
    return export_bundle(str(source), target, processing=processing, dtype=dtype or "float32")
