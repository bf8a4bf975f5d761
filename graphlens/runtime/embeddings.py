"""Embeddings in and out, as TransformerLens: ``embed``, ``input_to_embed``, ``get_residual``.

Token embeddings (``hook_embed``'s value, ``[batch, pos, d_model]``) enter the graph as the tensor the
``hook_embed`` site reads, given instead of computed (the partitioned run's ``given``): everything the
model adds to them (positional embeddings, padding) runs in the graph as for tokens.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int

from graphlens.errors import InputError, InputTypeError, NotSupportedError
from graphlens.rewrite.partition import pre_hook_tensor
from graphlens.runtime.inputs import as_numpy, check_attention_mask, offset_position_ids

EMBED_SITE = "hook_embed"


def as_embeds(input, d_model: int, dtype) -> Float[np.ndarray, "batch pos d_model"] | None:
    """``input`` as embeddings when it is a float array ``[batch, pos, d_model]``; None for text or tokens."""
    if isinstance(input, str) or (isinstance(input, (list, tuple)) and (not input or isinstance(input[0], str))):
        return None
    array = as_numpy(input)
    if not np.issubdtype(array.dtype, np.floating):
        return None
    if array.ndim != 3 or array.shape[-1] != d_model:
        raise InputError(f"embeddings must have shape [batch, pos, d_model={d_model}]; got {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def embed_input(graph) -> str:
    """The tensor of ``graph`` that holds the token embeddings (what ``hook_embed`` reads)."""
    return pre_hook_tensor(graph.proto.graph, EMBED_SITE)


class EmbeddingsMixin:
    """TransformerLens' embedding entry points for HookedTransformer."""

    def embed(self, tokens: Int[np.ndarray, "batch pos"]) -> Float[np.ndarray, "batch pos d_model"]:
        """Token embeddings ``W_E[tokens]``, as TransformerLens' ``model.embed(tokens)`` (no hooks run)."""
        tokens = as_numpy(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise InputTypeError(f"embed takes integer token ids; got {tokens.dtype}")
        return self.W_E[tokens]

    def get_residual(
        self,
        embed: Float[np.ndarray, "batch pos d_model"],
        pos_offset: int = 0,
        prepend_bos: bool | None = None,
        attention_mask: Int[np.ndarray, "batch past_and_pos"] | None = None,
        tokens: Int[np.ndarray, "batch pos"] | None = None,
        return_shortformer_pos_embed: bool = True,
        device: str | None = None,
    ):
        """The residual stream entering block 0 for token embeddings ``embed`` (adds the positional embedding).

        As TransformerLens: positions start at ``pos_offset``; with an ``attention_mask`` (covering
        ``pos_offset`` earlier positions too) they count from each row's first real token and padded
        positions get no positional embedding. Returns ``(residual, None)`` (no shortformer models) or,
        with ``return_shortformer_pos_embed=False``, the residual alone.
        """
        embeds = as_embeds(embed, self.cfg.d_model, self.cfg.dtype)
        if embeds is None:
            raise InputTypeError("get_residual takes float embeddings [batch, pos, d_model]")
        batch, pos = embeds.shape[:2]
        if attention_mask is None:
            mask, positions = None, np.arange(pos_offset, pos_offset + pos)[None].repeat(batch, 0)
        else:
            full = check_attention_mask(attention_mask, np.zeros((batch, pos_offset + pos), dtype=np.int64))
            mask, positions = full[:, pos_offset:], offset_position_ids(full)[:, pos_offset:]
        residual = self.residual_from_embeds(embeds, mask, positions)
        return (residual, None) if return_shortformer_pos_embed else residual

    def residual_from_embeds(
        self,
        embeds: Float[np.ndarray, "batch pos d_model"],
        attention_mask: Int[np.ndarray, "batch pos"] | None = None,
        position_ids: Int[np.ndarray, "batch pos"] | None = None,
    ) -> Float[np.ndarray, "batch pos d_model"]:
        """The graph from ``hook_embed`` to block 0's input, with ``embeds`` as the token embeddings."""
        from graphlens.runtime.layer_bounds import residual_before

        dummy = np.zeros(embeds.shape[:2], dtype=np.int64)
        name = residual_before(self, 0)
        results = self.run_graph(dummy, [name], given={embed_input(self.graph): embeds},
                                 attention_mask=attention_mask, position_ids=position_ids)
        return results[name]

    def input_to_embed(
        self,
        input,
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        attention_mask: Int[np.ndarray, "batch pos"] | None = None,
        past_kv_cache=None,
    ):
        """``(residual, tokens, shortformer_pos_embed, attention_mask)`` as TransformerLens' ``input_to_embed``.

        ``residual`` enters block 0; ``attention_mask`` is the padding mask TransformerLens would use
        (None when nothing is masked); ``shortformer_pos_embed`` is None (no shortformer models). As in
        TransformerLens, ``padding_side`` only pads strings: the mask follows the tokenizer's padding side
        (``forward(padding_side=...)`` sets both).
        """
        if past_kv_cache is not None:
            raise NotSupportedError("input_to_embed with past_kv_cache: use generate, which keeps its own KV cache")
        tokens = self.tokens_from(input, prepend_bos, padding_side)
        mask = self.padding_mask(tokens, attention_mask, prepend_bos)
        residual = self.forward(tokens, stop_at_layer=0, attention_mask=mask)
        return residual, tokens, None, mask
