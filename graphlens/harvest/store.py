"""``ActivationStore``: a harvest's activations as numpy batches, one shard in memory at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from graphlens.errors import HarvestError, InputError, UnknownHookError
from graphlens.harvest.layout import HookLayout
from graphlens.harvest.shards import TOKENS, _safetensors, read_index


class ActivationStore:
    """Read a ``graphlens harvest`` folder: ``store.batches("blocks.1.hook_resid_post", 4096)``.

    ``hooks`` (name → ``{"shape", "dtype", "stats", ...}``), ``n_sequences``, ``n_tokens``,
    ``context_size``, ``stats(hook)`` and ``tokens()`` come from ``index.json``; activations are read
    shard by shard (memory: ``buffer_shards`` shards of one hook).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = read_index(self.path)
        if index is None:
            raise HarvestError(f"{self.path} has no index.json: not a graphlens harvest folder")
        if not index.get("complete"):
            raise HarvestError(f"{self.path} is an unfinished harvest; finish it with `graphlens harvest ... --resume`")
        self.index = index
        self.hooks: dict[str, dict] = index["hooks"]
        self.context_size: int = index["context_size"]
        self.n_sequences: int = index["total_sequences"]
        self.n_tokens: int = index["total_tokens"]
        self.shards: list[Path] = [self.path / entry["file"] for entry in index["shards"]]

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, {self.n_tokens} tokens, hooks={list(self.hooks)})"

    def layout(self, hook: str) -> HookLayout:
        if hook not in self.hooks:
            raise UnknownHookError(hook, self.hooks)
        info = self.hooks[hook]
        return HookLayout(hook, tuple(info["shape"]), info["token_axis"])

    def stats(self, hook: str) -> dict[str, np.ndarray | float]:
        """``mean`` and ``variance`` per feature (``[d]``, float64) and ``max_norm`` of the harvested tokens."""
        stats = self.hooks[self.layout(hook).name]["stats"]
        return {"mean": np.asarray(stats["mean"]), "variance": np.asarray(stats["variance"]), "max_norm": stats["max_norm"]}

    def shard(self, number: int, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Shard ``number``'s arrays (``tokens`` and every hook, or ``names``)."""
        with _safetensors().safe_open(str(self.shards[number]), framework="numpy") as file:
            return {name: file.get_tensor(name) for name in (names or file.keys())}

    def tokens(self) -> Iterator[np.ndarray]:
        """The token ids ``[n_seq, context_size]`` of each shard, in order."""
        for number in range(len(self.shards)):
            yield self.shard(number, [TOKENS])[TOKENS]

    def batches(
        self, hook: str, batch_size: int, shuffle: bool = False, flatten: bool = True, seed: int | None = None,
        buffer_shards: int = 4, drop_last: bool = False, shards: Sequence[int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Batches of ``hook``'s activations, as numpy.

        ``flatten=True``: ``[batch_size, d]`` rows, one per token (the token axis first, see
        ``layout``); ``flatten=False``: ``[batch_size, *shape]``, one per sequence. ``shuffle``
        permutes rows across ``buffer_shards`` shards at a time, in a random shard order
        (``seed``); otherwise rows come in harvest order. ``drop_last`` drops a short final batch;
        ``shards`` reads only those shards (e.g. all but the last, held out).
        """
        layout = self.layout(hook)
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        chosen = np.arange(len(self.shards)) if shards is None else np.asarray(list(shards), dtype=np.int64)
        order = rng.permutation(chosen) if shuffle else chosen
        group = max(1, buffer_shards) if shuffle else 1
        carry = None
        for start in range(0, len(order), group):
            parts = [self.shard(int(n), [hook])[hook] for n in order[start:start + group]]
            rows = [layout.flat(p) if flatten else p for p in parts]
            buffer = np.concatenate(([carry] if carry is not None else []) + rows)
            if shuffle:
                buffer = buffer[rng.permutation(len(buffer))]
            whole = len(buffer) // batch_size * batch_size
            for offset in range(0, whole, batch_size):
                yield buffer[offset:offset + batch_size]
            carry = buffer[whole:]
        if carry is not None and len(carry) and not drop_last:
            yield carry
