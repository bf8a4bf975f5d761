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
from graphlens.runtime.inputs import attention_mask_for, offset_position_ids
from graphlens.runtime.graph import LOGITS
from graphlens.runtime.hooks import blocks_run
from graphlens.runtime.inputs import as_numpy
from graphlens.runtime.layer_bounds import _residual, residual_before


@dataclass
class CachedStep:
    logits: np.ndarray | None  # [batch, new, d_vocab_out]; None with stop_at_layer
    hooks: dict[str, np.ndarray]
    tokens: np.ndarray | None  # None with start_at_layer and no tokens=
    residual: np.ndarray | None = None  # with stop_at_layer: the residual stream there
    attention_mask: np.ndarray | None = None  # the loss covers every new token (as the forward without a cache)


class KVForwardMixin:
    """The KV-cache path of ``forward`` and ``run_with_cache`` for HookedTransformer."""

    def _kv_step(self, input, cache: KeyValueCache, hook_names, prepend_bos=None, padding_side=None,
                 attention_mask=None, start_at_layer=None, stop_at_layer=None, tokens=None) -> CachedStep:
        if not isinstance(cache, KeyValueCache):
            raise InputError(f"past_kv_cache must be a graphlens.KeyValueCache (KeyValueCache.init_cache(model.cfg, "
                             f"model.cfg.device, batch_size)), not {type(cache).__name__}")
        if start_at_layer is None:
            tokens = feed = self.tokens_from(input, prepend_bos, padding_side)
            residual = None
        else:
            residual = _residual(input, self)
            tokens = None if tokens is None else self.tokens_from(tokens)
            feed = tokens if tokens is not None else np.zeros(residual.shape[:2], dtype=np.int64)
        batch, new = feed.shape
        past = cache.past_length
        if batch != cache.batch_size:
            raise InputError(f"the cache was made for batch size {cache.batch_size}; got {batch} rows")
        if past + new > self.cfg.n_ctx:
            raise InputError(f"{past} cached + {new} new positions exceed n_ctx={self.cfg.n_ctx}")
        full_mask = self._cached_mask(cache, feed, tokens, attention_mask, prepend_bos, padding_side,
                                      full_allowed=start_at_layer is not None)
        positions = offset_position_ids(full_mask)[:, past:]
        decoder = self._kv_decoder(batch)
        if decoder.graph.device != cache.device:
            raise InputError(f"the cache lives on {cache.device} but the model runs on {decoder.graph.device}")
        decoder.past = list(cache.values)
        if start_at_layer is None and stop_at_layer is None:
            logits, hooks = decoder.step(feed, full_mask, positions, list(hook_names), None, None,
                                         self.hooked_sites(), self.call_hooks)
            cache.update(decoder.past)
            return CachedStep(logits, hooks, tokens)
        blocks = blocks_run(self.cfg.n_layers, start_at_layer, stop_at_layer)
        first, last = blocks.start, max(blocks.stop, blocks.start)
        given = {residual_before(self, first, decoder.graph): residual} if residual is not None else {}
        stop_name = residual_before(self, last, decoder.graph) if stop_at_layer is not None else None
        outputs = list(hook_names) + ([stop_name] if stop_name else [LOGITS])
        results = decoder.bounded_step(feed, full_mask, positions, blocks, outputs, given,
                                       self.hooked_sites(start_at_layer, stop_at_layer), self.call_hooks)
        cache.update(decoder.past)
        return CachedStep(results.get(LOGITS), {n: results[n] for n in hook_names}, tokens,
                          results[stop_name] if stop_name else None)

    def _cached_mask(self, cache, feed, tokens, attention_mask, prepend_bos, padding_side, full_allowed: bool):
        """The mask over past and new positions: the new tokens' (given, or from their padding) appended to the
        cache's. With start_at_layer TransformerLens passes the whole mask, which is taken as it is."""
        if attention_mask is None:
            if tokens is None:
                return cache.append_attention_mask(np.ones_like(feed))
            return cache.append_attention_mask(self._default_attention_mask(tokens, prepend_bos, padding_side))
        mask = as_numpy(attention_mask).astype(np.int64)
        if full_allowed and mask.shape == (feed.shape[0], cache.past_length + feed.shape[1]):
            return mask
        if mask.shape != feed.shape:
            raise InputError(f"attention_mask {mask.shape} must have the tokens' shape {feed.shape}"
                             + (" (or [batch, past + new] with start_at_layer)" if full_allowed else ""))
        return cache.append_attention_mask(mask)

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
