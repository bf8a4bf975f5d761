"""Writing a bundle folder without ever losing a file: where it may go, and how it replaces an old one.

The rule, the same for ``graphlens export`` and ``graphlens intervene``: the output folder may be new,
empty, or a graphlens bundle (replaced only with ``--force`` / ``overwrite=True``). Anything else, a
folder holding files that are not part of a bundle included, is refused: graphlens deletes nothing
it did not write.

The new bundle is written to ``.NAME.tmp-PID-XXXX`` beside the output; a replaced bundle is first
renamed aside to ``.NAME.old-PID-XXXX``, the new one renamed in, then the old one deleted, so a
crash at any point leaves one complete bundle. Leftovers of a process that is gone are cleaned at the
next write to the same place (an old bundle left aside is renamed back when the output is missing).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from graphlens.errors import BundleError

MANIFEST = "graphlens.json"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^/]+$")


def bundle_files(folder: Path) -> set[str] | None:
    """The files ``folder``'s manifest says belong to the bundle (None: no readable manifest)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != "graphlens-bundle":
        return None
    names = {MANIFEST}
    names |= set(manifest.get("files") or {})
    names |= {manifest.get("model_file"), manifest.get("external_data_file")}
    names |= set(manifest.get("tokenizer_files") or [])
    for graph in (manifest.get("decoder"), manifest.get("backward")):
        if isinstance(graph, dict):
            names.add(graph.get("file"))
    return {n for n in names if isinstance(n, str)}


def check_destination(out: Path, overwrite: bool) -> None:
    """Raise a BundleError unless ``out`` is new, empty, or a bundle that may be replaced."""
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise BundleError(f"refusing to write a bundle over {out}, which holds the current folder; name a new folder")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise BundleError(f"{out} exists and is not a folder; choose another output folder")
    present = {p.name for p in out.iterdir()}
    if not present:
        return
    belongs = bundle_files(out)
    if belongs is None:
        raise BundleError(
            f"{out} is a non-empty folder that is not a graphlens bundle; graphlens deletes nothing it did not "
            f"write: choose a new or empty output folder"
        )
    foreign = sorted(present - belongs)
    if foreign:
        raise BundleError(
            f"{out} holds files that are not part of its bundle ({', '.join(foreign[:5])}); move them away or "
            f"choose another output folder"
        )
    if not overwrite:
        raise BundleError(f"{out} already holds a graphlens bundle; pass --force (overwrite=True) to replace it")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """Remove temp folders of dead writers of ``out``; put back an old bundle left aside. Returns what it removed."""
    parent, removed = out.parent, []
    if not parent.is_dir():
        return removed
    for entry in sorted(parent.iterdir()):
        match = _LEFTOVER.match(entry.name)
        if not match or match["name"] != out.name or not entry.is_dir() or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out.exists():
            entry.rename(out)  # the crash came between moving the old bundle aside and moving the new one in
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def replace_folder(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is renamed aside first and deleted last."""
    if not out.exists():
        new.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    aside.rmdir()  # only the unique name is wanted
    out.rename(aside)
    try:
        new.rename(out)
    except BaseException:
        aside.rename(out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def writing_bundle(out: str | os.PathLike, overwrite: bool = False,
                   check: Callable[[Path, bool], None] = check_destination) -> Iterator[Path]:
    """A temporary folder beside ``out`` that replaces ``out`` when the block succeeds (removed if it fails).

    ``out`` is checked first (``check``: ``check_destination`` for bundles) and again before the replacement.
    """
    out = Path(os.path.abspath(out))
    check(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        _usual_permissions(tmp)
        check(out, overwrite)
        replace_folder(tmp, out)
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
