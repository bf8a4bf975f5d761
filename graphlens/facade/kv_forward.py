"""``forward(..., past_kv_cache=cache)``: only the new tokens run, on the decoder graph, reading the cache.

As TransformerLens' forward with a ``HookedTransformerKeyValueCache``: the new tokens' attention mask
(given, or from the pad tokens) is appended to the cache's, positions count from each row's first real
token over past and new tokens, and the new keys/values are appended (unless frozen). Hooks run on the
new positions; cached activations cover the new positions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphlens.errors import InputError
from graphlens.facade.kv_cache import KeyValueCache
from graphlens.runtime.generation import attention_mask_for, offset_position_ids
from graphlens.runtime.inputs import as_numpy


@dataclass
class CachedStep:
    logits: np.ndarray  # [batch, new, d_vocab_out]
    hooks: dict[str, np.ndarray]
    tokens: np.ndarray


class KVForwardMixin:
    """The KV-cache path of ``forward`` and ``run_with_cache`` for HookedTransformer."""

    def _kv_step(self, input, cache: KeyValueCache, hook_names, prepend_bos=None, padding_side=None,
                 attention_mask=None, start_at_layer=None, stop_at_layer=None) -> CachedStep:
        if not isinstance(cache, KeyValueCache):
            raise InputError(f"past_kv_cache must be a graphlens.KeyValueCache (KeyValueCache.init_cache(model.cfg, "
                             f"model.cfg.device, batch_size)), not {type(cache).__name__}")
        if start_at_layer is not None or stop_at_layer is not None:
            raise InputError("start_at_layer/stop_at_layer cannot be combined with past_kv_cache in graphlens; "
                             "run the new tokens through the whole model")
        tokens = self.tokens_from(input, prepend_bos, padding_side)
        if tokens.shape[0] != cache.batch_size:
            raise InputError(f"the cache was made for batch size {cache.batch_size}; got {tokens.shape[0]} rows")
        if cache.past_length + tokens.shape[1] > self.cfg.n_ctx:
            raise InputError(f"{cache.past_length} cached + {tokens.shape[1]} new positions exceed n_ctx={self.cfg.n_ctx}")
        if attention_mask is None:
            mask = self._default_attention_mask(tokens, prepend_bos, padding_side)
        else:
            mask = as_numpy(attention_mask).astype(np.int64)
            if mask.shape != tokens.shape:
                raise InputError(f"attention_mask {mask.shape} must have the tokens' shape {tokens.shape}")
        full_mask = cache.append_attention_mask(mask)
        positions = offset_position_ids(full_mask)[:, cache.past_length:]
        decoder = self._kv_decoder(tokens.shape[0])
        if decoder.graph.device != cache.device:
            raise InputError(f"the cache lives on {cache.device} but the model runs on {decoder.graph.device}")
        decoder.past = list(cache.values)
        logits, hooks = decoder.step(tokens, full_mask, positions, list(hook_names), None, None,
                                     self.hooked_sites(), self.call_hooks)
        cache.update(decoder.past)
        return CachedStep(logits, hooks, tokens)

    def _default_attention_mask(self, tokens, prepend_bos, padding_side) -> np.ndarray:
        """TransformerLens' ``utils.get_attention_mask``: padding at the padded end is 0."""
        tok = self.tokenizer
        if tok is None:
            return np.ones_like(tokens, dtype=np.int64)
        prepend = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        return attention_mask_for(tokens, tok.pad_token_id, tok.bos_token_id, prepend, padding_side or tok.padding_side)

    def _decoder_hook_names(self, names: list[str]) -> list[str]:
        known = set(self._kv_decoder(1).graph.output_names)
        return [n for n in names if n in known]
