"""``KeyValueCache``: TransformerLens' ``HookedTransformerKeyValueCache`` over the bundle's decoder graph.

The keys and values stay ONNX Runtime values (on the GPU under CUDA) between forwards, in the decoder
graph's layout ``[batch, n_key_value_heads, pos, d_head]``; ``entry.past_keys`` shows them in
TransformerLens' layout ``[batch, pos_so_far, n_key_value_heads, d_head]`` (a host copy, read-only).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnxruntime as ort
from jaxtyping import Float, Int

from graphlens.errors import InputError
from graphlens.runtime.kv_decoder import ort_device
from graphlens.runtime.session import resolve_device


def _host(value: ort.OrtValue) -> Float[np.ndarray, "batch pos n_kv_heads d_head"]:
    array = np.swapaxes(value.numpy(), 1, 2)
    array.flags.writeable = False
    return array


class KeyValueCacheEntry:
    """One layer's past keys and values; ``frozen`` entries are read but not extended by a forward."""

    def __init__(self, cache: "KeyValueCache", layer: int):
        self._cache, self.layer, self.frozen = cache, layer, False

    @property
    def past_keys(self) -> Float[np.ndarray, "batch pos_so_far n_kv_heads d_head"]:
        return _host(self._cache.values[2 * self.layer])

    @property
    def past_values(self) -> Float[np.ndarray, "batch pos_so_far n_kv_heads d_head"]:
        return _host(self._cache.values[2 * self.layer + 1])

    def __repr__(self) -> str:
        return f"KeyValueCacheEntry(layer={self.layer}, past={self._cache.values[2 * self.layer].shape()}, frozen={self.frozen})"


class KeyValueCache:
    """Past keys/values of every layer and the attention mask so far, as TransformerLens' KV cache.

    ``KeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size)``, then ``model(tokens,
    past_kv_cache=cache)`` runs only the new tokens and appends their keys, values and mask (unless
    frozen: ``freeze()`` / ``unfreeze()``).
    """

    def __init__(self, values: list[ort.OrtValue], previous_attention_mask: Int[np.ndarray, "batch pos_so_far"],
                 device: str, dtype: str):
        self.values, self.device, self.dtype = values, device, dtype
        self.previous_attention_mask = previous_attention_mask
        self._mask_frozen = False
        self.entries = [KeyValueCacheEntry(self, layer) for layer in range(len(values) // 2)]

    @classmethod
    def init_cache(cls, cfg, device: str | None = None, batch_size: int = 1) -> "KeyValueCache":
        """An empty cache for a model with config ``cfg`` (``model.cfg``) and ``batch_size`` rows."""
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
        device = resolve_device(str(device) if device is not None else cfg.device)
        n_kv = cfg.n_key_value_heads or cfg.n_heads
        empty = np.zeros((int(batch_size), n_kv, 0, cfg.d_head), dtype=np.dtype(cfg.dtype))
        kind, index = ort_device(device)
        values = [ort.OrtValue.ortvalue_from_numpy(empty, kind, index) for _ in range(2 * cfg.n_layers)]
        return cls(values, np.zeros((int(batch_size), 0), dtype=np.int64), device, cfg.dtype)

    @property
    def frozen(self) -> bool:
        return all(entry.frozen for entry in self.entries)

    def freeze(self) -> None:
        """Later forwards read the cache but do not extend it."""
        for entry in self.entries:
            entry.frozen = True
        self._mask_frozen = True

    def unfreeze(self) -> None:
        for entry in self.entries:
            entry.frozen = False
        self._mask_frozen = False

    @property
    def batch_size(self) -> int:
        return self.previous_attention_mask.shape[0]

    @property
    def past_length(self) -> int:
        """Positions held so far (TransformerLens' ``get_pos_offset``)."""
        lengths = {value.shape()[2] for value in self.values}
        if len(lengths) != 1:
            raise InputError(f"the cache's layers hold different lengths {sorted(lengths)}; start from a new cache")
        return lengths.pop()

    def append_attention_mask(self, attention_mask: Int[np.ndarray, "batch new"]) -> Int[np.ndarray, "batch pos_so_far_plus_new"]:
        """The mask so far with ``attention_mask`` appended; kept unless the cache is frozen."""
        mask = np.asarray(attention_mask, dtype=np.int64)
        if mask.ndim != 2 or mask.shape[0] != self.batch_size:
            raise InputError(f"attention_mask must be [batch={self.batch_size}, new_tokens]; got shape {mask.shape}")
        updated = np.concatenate([self.previous_attention_mask, mask], axis=1)
        if not self._mask_frozen:
            self.previous_attention_mask = updated
        return updated

    def update(self, presents: Sequence[ort.OrtValue]) -> None:
        """Take a step's present keys/values for every entry that is not frozen."""
        for entry in self.entries:
            if not entry.frozen:
                self.values[2 * entry.layer: 2 * entry.layer + 2] = presents[2 * entry.layer: 2 * entry.layer + 2]

    def __getitem__(self, layer: int) -> KeyValueCacheEntry:
        return self.entries[layer]

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"KeyValueCache({len(self.entries)} layers, batch {self.batch_size}, {self.past_length} positions, frozen={self.frozen})"
