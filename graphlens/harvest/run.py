"""``harvest``: a dataset's activations at the chosen hooks, into sharded safetensors (see README).

Three stages overlap: a reader thread reads, tokenizes and batches DATA; the calling thread runs the
model (ONNX Runtime releases the GIL); a writer thread writes shards. With ``ray``, the same stages
run on Ray Data (``graphlens.harvest.ray_data``) and the driver writes the same shards.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

import graphlens
from graphlens.errors import HarvestError, InputError
from graphlens.harvest.data import open_source
from graphlens.harvest.layout import RunningStats
from graphlens.harvest.plan import DEFAULT_MEMORY_BUDGET_MB, Plan, make_plan
from graphlens.harvest.sequences import sequences
from graphlens.harvest.shards import (FORMAT, FORMAT_VERSION, INDEX, TOKENS, ShardWriter, complete_shards,
                                      file_sha256, read_index, shard_stats, write_json_atomic)
from graphlens.harvest.windows import batches

_SHARD_RE = re.compile(r"^shard-(\d+)\.safetensors$")


def run_batch(model, tokens: np.ndarray, plan: Plan) -> dict[str, np.ndarray]:
    """One batch through the model: ``tokens`` and each hook as ``run_with_cache`` returns it, in the stored dtype."""
    _, cache = model.run_with_cache(tokens, names_filter=plan.options.hooks, return_type=None)
    return {TOKENS: tokens, **{name: cache[name].astype(plan.options.dtype, copy=False) for name in plan.options.hooks}}


def token_batches(model, plan: Plan, skip: int, source=None) -> Iterator[np.ndarray]:
    """The plan's token batches after the first ``skip`` sequences (the same batches whatever ``skip``)."""
    o = plan.options
    source = source or open_source(o.data, o.column)
    rows = sequences(source, model, o.context_size, o.prepend_bos, o.separator)
    return batches(rows, o.batch_size, skip=skip, limit=plan.max_sequences)


def harvest(
    bundle, data: str | os.PathLike, hooks: list[str] | str, context_size: int, out: str | os.PathLike,
    batch_size: int | None = None, max_tokens: int | None = None, dtype: str | None = None,
    prepend_bos: bool = True, separator: str | None = "bos", column: str = "text", resume: bool = False,
    ray: str | None = None, workers: int | None = None, shard_size: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, progress: bool = True, device: str | None = None,
) -> Path:
    """Harvest ``hooks`` (names, globs or substrings) over ``data`` into ``out``; returns ``out``.

    ``bundle`` is a bundle folder (or a loaded ``HookedTransformer``). Sequences follow SAELens'
    default tokenization (README "Harvesting activations"). ``resume=True`` continues an interrupted
    run and gives the same files; ``ray="auto"`` (a local Ray instance) or a cluster address runs the
    model on ``workers`` Ray actors and gives the same shards.
    """
    from graphlens import HookedTransformer

    model = bundle if isinstance(bundle, HookedTransformer) else HookedTransformer.from_pretrained(bundle, device=device)
    patterns = [hooks] if isinstance(hooks, str) else list(hooks)
    if workers is not None and ray is None:
        raise InputError("--workers sets the number of Ray actors: add --ray auto (or a cluster address)")
    out = Path(out)
    if resume and batch_size is None and (previous := read_index(out)) is not None:
        batch_size, shard_size = previous["options"]["batch_size"], previous["options"]["sequences_per_shard"]
    plan = make_plan(model, data, patterns, context_size, batch_size, max_tokens, dtype, prepend_bos, separator,
                     column, shard_size, memory_budget_mb)
    index = _start_index(model, plan, out, resume)
    done = complete_shards(out, index)
    index["shards"] = index["shards"][:done]
    _remove_leftovers(out, done)
    write_json_atomic(out / INDEX, index)
    lock = threading.Lock()

    def on_shard(entry: dict) -> None:
        with lock:
            index["shards"].append(entry)
            write_json_atomic(out / INDEX, index)

    writer = ShardWriter(out, plan.layouts, np.dtype(plan.options.dtype), plan.options.context_size,
                         plan.options.sequences_per_shard, done, on_shard)
    skip = done * plan.options.sequences_per_shard
    source = open_source(plan.options.data, plan.options.column)
    bar = _progress(plan, source, skip, progress)
    try:
        if ray is None:
            _run_local(model, plan, skip, source, writer, bar)
        else:
            from graphlens.harvest.ray_data import run_on_ray

            run_on_ray(model.bundle_dir, plan, skip, writer, bar, address=ray, workers=workers, device=device)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    _finish_index(out, index, plan)
    return out


def _run_local(model, plan: Plan, skip: int, source, writer: ShardWriter, bar) -> None:
    with _Prefetch(bar.counted(token_batches(model, plan, skip, source)), depth=2) as feed:
        for tokens in feed:
            writer.add(run_batch(model, tokens, plan))
            bar.advance(tokens.size)


class _Prefetch:
    """Runs an iterator on a background thread, ``depth`` items ahead; its errors surface in the consumer."""

    _END = object()

    def __init__(self, items: Iterator, depth: int):
        self._items, self._queue = items, queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="graphlens-harvest-reader", daemon=True)

    def __enter__(self) -> Iterator:
        self._thread.start()
        return self._drain()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()

    def _fill(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self._put(item)
            self._put(self._END)
        except BaseException as err:
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _drain(self) -> Iterator:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


class _Bar:
    """tqdm over tokens. Without a known total, it is estimated from the tokens the reader has made so
    far and the fraction of DATA it has read to make them (the reader runs ahead of the model)."""

    def __init__(self, bar: tqdm, source, limit: int | None):
        self.bar, self.source, self.limit = bar, source, limit
        self.read_tokens, self.read_fraction = 0, 0.0

    def counted(self, batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for tokens in batches:
            self.read_tokens += tokens.size
            self.read_fraction = self.source.fraction()
            yield tokens

    def advance(self, tokens: int) -> None:
        if self.limit is None and self.read_fraction > 0:
            self.bar.total = max(int(self.read_tokens / self.read_fraction), self.bar.n + tokens)
        self.bar.update(tokens)

    def close(self) -> None:
        self.bar.close()


def _progress(plan: Plan, source, skip: int, enabled: bool) -> _Bar:
    o = plan.options
    limit = None if plan.max_sequences is None else plan.max_sequences * o.context_size
    bar = tqdm(total=limit, initial=skip * o.context_size, unit="tok", unit_scale=True, desc="harvest",
               disable=not enabled, dynamic_ncols=True)
    return _Bar(bar, source, limit)


def _start_index(model, plan: Plan, out: Path, resume: bool) -> dict:
    """The index to continue (``resume``) or a fresh one; refuses to overwrite or to resume another job."""
    manifest = model.manifest
    files = [model.bundle_dir / manifest["model_file"]]
    if manifest.get("external_data_file") and (model.bundle_dir / manifest["external_data_file"]).is_file():
        files.append(model.bundle_dir / manifest["external_data_file"])
    fresh = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "graphlens_version": graphlens.__version__,
        "model": {"bundle": str(model.bundle_dir.resolve()), "source": manifest["source"].get("model"),
                  "architecture": manifest["architecture"],
                  "bundle_sha256": file_sha256([model.bundle_dir / "graphlens.json", *files])},
        "options": plan.options.as_dict(), "context_size": plan.options.context_size,
        "sequences_per_shard": plan.options.sequences_per_shard,
        "tokens_per_shard": plan.options.sequences_per_shard * plan.options.context_size,
        "tokens": {"shape": [plan.options.context_size], "dtype": "int64"},
        "hooks": {l.name: {"shape": list(l.shape), "dtype": plan.options.dtype, "token_axis": l.token_axis, "d": l.d}
                  for l in plan.layouts},
        "shards": [], "complete": False,
    }
    previous = read_index(out)
    if previous is None:
        if out.exists() and not out.is_dir():
            raise HarvestError(f"{out} is a file; -o must be a folder")
        if out.exists() and any(out.iterdir()) and not resume:
            raise HarvestError(f"{out} exists and is not empty; choose a new -o, or add --resume to continue a harvest there")
        out.mkdir(parents=True, exist_ok=True)
        return fresh
    if not resume:
        raise HarvestError(f"{out} already holds a harvest; add --resume to continue it, or choose a new -o")
    for key in ("model", "options"):
        if previous[key] != fresh[key]:
            diff = [k for k in fresh[key] if previous[key].get(k) != fresh[key][k]]
            raise HarvestError(f"--resume: {out} was harvested with different {key} ({', '.join(diff)}); "
                               f"use the same ones, or a new -o")
    return {**fresh, "shards": previous["shards"]}


def _remove_leftovers(out: Path, done: int) -> None:
    """Temporary files of an interrupted write, and shards after the last complete one listed."""
    for path in out.iterdir():
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            path.unlink()
        elif (match := _SHARD_RE.match(name)) and int(match.group(1)) >= done:
            path.unlink()


def _finish_index(out: Path, index: dict, plan: Plan) -> None:
    if not index["shards"]:
        raise HarvestError(f"{plan.options.data}: no complete sequence of {plan.options.context_size} tokens; "
                           f"give more data or a smaller --context-size")
    totals: dict[str, RunningStats] = {}
    for entry in index["shards"]:
        for name, stats in shard_stats(out / entry["file"]).items():
            totals[name] = totals[name].merge(stats) if name in totals else stats
    for name, stats in totals.items():
        index["hooks"][name]["stats"] = stats.summary()
    index["total_sequences"] = sum(e["sequences"] for e in index["shards"])
    index["total_tokens"] = sum(e["tokens"] for e in index["shards"])
    index["complete"] = True
    write_json_atomic(out / INDEX, index)
