"""The harvest's output folder: ``index.json`` and ``shard-NNNNN.safetensors``, each written whole.

A shard is written to a hidden temporary name and renamed when complete; the index is rewritten
(also atomically) after every shard, so an interrupted run leaves only complete shards, all listed.
Each shard's header metadata holds its per-hook statistics, which the index merges in shard order.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import threading
from pathlib import Path

import numpy as np

from graphlens.errors import HarvestError
from graphlens.harvest.layout import HookLayout, RunningStats

INDEX = "index.json"
FORMAT = "graphlens-harvest"
FORMAT_VERSION = 1
STATS_KEY = "graphlens.stats"
TOKENS = "tokens"
_UMASK = os.umask(0)
os.umask(_UMASK)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise HarvestError("writing shards needs the safetensors package: pip install 'graphlens[harvest]'") from None
    return safetensors.numpy


def file_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as file:
            while block := file.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _disk_error(err, path) from None


def read_index(out: Path) -> dict | None:
    path = out / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HarvestError(f"{path} is damaged ({err.msg}); remove {out} and harvest again") from None
    if index.get("format") != FORMAT:
        raise HarvestError(f"{path} is not a graphlens harvest index (format={index.get('format')!r})")
    return index


def complete_shards(out: Path, index: dict) -> int:
    """How many leading shards of ``index`` are on disk whole (the size the index recorded)."""
    count = 0
    for entry in index.get("shards", []):
        path = out / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            break
        count += 1
    return count


def shard_stats(path: Path) -> dict[str, RunningStats]:
    """The statistics a shard's header holds (read without loading its tensors)."""
    with _safetensors().safe_open(str(path), framework="numpy") as file:
        metadata = file.metadata() or {}
    if STATS_KEY not in metadata:
        raise HarvestError(f"{path} has no statistics in its header: not a graphlens harvest shard")
    return {name: RunningStats.from_json(s) for name, s in json.loads(metadata[STATS_KEY]).items()}


def _disk_error(err: OSError, path: Path) -> Exception:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return HarvestError(f"disk full while writing {path}; free space (complete shards are kept) and run again with --resume")
    return HarvestError(f"cannot write {path}: {err.strerror or err}")


class ShardWriter:
    """Collects batches into shards of ``sequences_per_shard`` and writes them on a background thread.

    ``on_shard(entry)`` runs (on the writer thread) after each shard is renamed into place.
    """

    def __init__(self, out: Path, layouts: list[HookLayout], dtype: np.dtype, context_size: int,
                 sequences_per_shard: int, first_shard: int, on_shard):
        self.out, self.layouts, self.dtype = out, layouts, np.dtype(dtype)
        self.context_size, self.per_shard, self.on_shard = context_size, sequences_per_shard, on_shard
        self.next_shard = first_shard
        self._pending: list[dict[str, np.ndarray]] = []
        self._filled = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="graphlens-shard-writer", daemon=True)
        self._thread.start()

    def add(self, batch: dict[str, np.ndarray]) -> None:
        """One batch: ``tokens`` ``[n, context_size]`` and each hook ``[n, *shape]``."""
        self.check()
        n = len(batch[TOKENS])
        start = 0
        while start < n:
            take = min(n - start, self.per_shard - self._filled)
            self._pending.append({k: v[start:start + take] for k, v in batch.items()})
            self._filled += take
            start += take
            if self._filled == self.per_shard:
                self._flush()

    def close(self) -> None:
        """Write the last (partial) shard and wait for every write to finish."""
        if self._filled:
            self._flush()
        self._queue.put(None)
        self._thread.join()
        self.check()

    def abort(self) -> None:
        """Stop without writing what is pending (after an error or an interrupt)."""
        self._pending, self._filled = [], 0
        self._queue.put(None)
        self._thread.join()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def _flush(self) -> None:
        tensors = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        self._pending, self._filled = [], 0
        while True:  # wait for the writer, but notice if it failed meanwhile
            self.check()
            try:
                self._queue.put((self.next_shard, tensors), timeout=0.2)
                break
            except queue.Full:
                continue
        self.next_shard += 1

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.on_shard(self._write(*item))
                except BaseException as err:  # handed to the producer thread
                    self._error = err

    def _write(self, number: int, tensors: dict[str, np.ndarray]) -> dict:
        stats = {}
        for layout in self.layouts:
            acts = tensors[layout.name]
            parts = [RunningStats.of(layout.flat(acts[i:i + 64])) for i in range(0, len(acts), 64)]
            total = parts[0]
            for part in parts[1:]:
                total = total.merge(part)
            stats[layout.name] = total.to_json()
        path = self.out / shard_name(number)
        tmp = self.out / f".{path.name}.tmp"
        arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
        try:
            _safetensors().save_file(arrays, str(tmp), metadata={STATS_KEY: json.dumps(stats)})
            tmp.chmod(0o666 & ~_UMASK)  # the mode a plain open() gives, not the writer's owner-only one
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise _disk_error(err, path) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        n = len(tensors[TOKENS])
        return {"file": path.name, "sequences": n, "tokens": n * self.context_size, "bytes": path.stat().st_size}
