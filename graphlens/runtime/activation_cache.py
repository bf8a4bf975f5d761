"""``ActivationCache``: the activations of one run, addressed as TransformerLens addresses them."""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import numpy as np

from graphlens.analysis.cache_methods import CacheAnalysisMixin
from graphlens.runtime.session import resolve_device
from graphlens.sites import get_act_name
from graphlens.errors import InputError, InputTypeError
from graphlens.slicing import Slice


class ActivationCache(CacheAnalysisMixin):
    """Hook name → numpy array, with TransformerLens' shorthand keys.

    ``cache["blocks.0.attn.hook_pattern"]``, ``cache["pattern", 0]``, ``cache["resid_post", -1]``,
    ``cache["scale", 2, "ln1"]`` and ``cache["scale"]`` (ln_final) all work.
    """

    def __init__(self, cache_dict: dict[str, np.ndarray], model, has_batch_dim: bool = True):
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    def _resolve(self, key) -> str:
        if isinstance(key, str):
            if key in self.cache_dict:
                return key
            return get_act_name(key)
        if isinstance(key, tuple):
            name, *rest = key
            layer = rest[0] if rest else None
            layer_type = rest[1] if len(rest) > 1 else None
            if isinstance(layer, (int, np.integer)) and layer < 0:
                layer = self.model.cfg.n_layers + int(layer)
            return get_act_name(name, layer, layer_type)
        raise InputTypeError(f"cache keys are hook names or (name, layer[, layer_type]) tuples, not {type(key).__name__}")

    def __getitem__(self, key) -> np.ndarray:
        return self._get(key)

    def __contains__(self, key) -> bool:
        try:
            return self._resolve(key) in self.cache_dict
        except TypeError:
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self):
        return self.cache_dict.keys()

    def values(self):
        return self.cache_dict.values()

    def items(self):
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict)}"

    def to(self, device: str, move_model: bool = False) -> "ActivationCache":
        """Arrays are numpy (host memory) whatever device ran the model; kept for TransformerLens parity.

        A device ONNX Runtime does not have here (``"cuda"`` without onnxruntime-gpu) is refused (DeviceError);
        ``move_model=True`` moves the model too (``model.to(device)``).
        """
        device = resolve_device(str(device))
        if move_model:
            self.model.to(device)
        return self

    def remove_batch_dim(self) -> "ActivationCache":
        """Drop a batch dimension of size 1 from every activation (in place; returns the cache), as TransformerLens."""
        if not self.has_batch_dim:
            return self
        for name, value in self.cache_dict.items():
            if value.shape[0] != 1:
                raise InputError(f"remove_batch_dim needs batch size 1; {name} has batch size {value.shape[0]}")
            self.cache_dict[name] = value[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice) -> "ActivationCache":
        """A new cache indexed on the batch dimension (a ``Slice`` or what ``Slice`` takes); an int drops it.

        As TransformerLens, entries whose leading dim is 1 while the batch is larger (broadcast
        entries) are left as they are.
        """
        batch_slice = Slice(batch_slice)
        if batch_slice.mode == "identity":
            return ActivationCache(dict(self.cache_dict), self.model, self.has_batch_dim)
        if not self.has_batch_dim:
            raise InputError("this cache has no batch dimension")
        batch = Counter(v.shape[0] for v in self.cache_dict.values() if v.ndim).most_common(1)
        size = batch[0][0] if batch else 1
        sliced = {name: batch_slice.apply(value) if value.ndim and value.shape[0] == size else value
                  for name, value in self.cache_dict.items()}
        return ActivationCache(sliced, self.model, has_batch_dim=batch_slice.mode != "int")
