"""``start_at_layer`` / ``stop_at_layer``: run only the blocks in between, as TransformerLens does.

The graph is specialised, not run in full: ``stop_at_layer=L`` asks for the residual stream before
block L as the output (nothing after it is computed); ``start_at_layer=L`` feeds that tensor instead
of computing it (the embedding and earlier blocks are pruned; only shape arithmetic reads the tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from graphlens.rewrite.partition import pre_hook_tensor
from graphlens.runtime.hooks import blocks_run
from graphlens.runtime.inputs import as_numpy, check_attention_mask, check_tokens
from graphlens.errors import InputError, InputTypeError


@dataclass
class BoundedRun:
    results: dict[str, np.ndarray]
    tokens: np.ndarray | None  # token ids (None when starting at a layer without ``tokens``)
    residual: np.ndarray | None  # the residual stream where the run stopped (with stop_at_layer)
    attention_mask: np.ndarray | None = None  # the padding mask the run used (None: nothing masked)


def residual_before(model, layer: int, graph=None) -> str:
    """The tensor of ``graph`` (default: the model's) holding the residual stream that enters block ``layer``
    (``n_layers``: the last block's output)."""
    n_layers = model.cfg.n_layers
    if layer < n_layers:
        return pre_hook_tensor((graph or model.graph).proto.graph, f"blocks.{layer}.hook_resid_pre")
    return f"blocks.{n_layers - 1}.hook_resid_post"


def _residual(input, model) -> Float[np.ndarray, "batch pos d_model"]:
    residual = as_numpy(input)
    if residual.ndim != 3 or residual.shape[-1] != model.cfg.d_model:
        raise InputError(
            f"with start_at_layer, input is the residual stream [batch, pos, d_model={model.cfg.d_model}]; "
            f"got shape {residual.shape}"
        )
    if not np.issubdtype(residual.dtype, np.floating):
        raise InputTypeError(f"the residual stream must be floating point; got {residual.dtype}")
    return np.ascontiguousarray(residual, dtype=model.cfg.dtype)


def bounded_run(
    model,
    input,
    outputs: list[str],
    start_at_layer: int | None,
    stop_at_layer: int | None,
    tokens=None,
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
    attention_mask=None,
) -> BoundedRun:
    """Run ``outputs`` (sites outside the bounds are the caller's to drop) between the bounds.

    The padding mask is TransformerLens': from tokens, ``model.padding_mask``; from a residual stream
    (``start_at_layer``), only the ``attention_mask`` given.
    """
    blocks = blocks_run(model.cfg.n_layers, start_at_layer, stop_at_layer)
    first, last = blocks.start, max(blocks.stop, blocks.start)
    given = None
    if start_at_layer is None:
        tokens = feed = model.tokens_from(input, prepend_bos, padding_side)
        mask = model.padding_mask(tokens, attention_mask, prepend_bos, padding_side)
    else:
        residual = _residual(input, model)
        if tokens is not None:
            tokens = check_tokens(as_numpy(tokens), model.cfg.d_vocab, model.cfg.n_ctx)
            if tokens.shape != residual.shape[:2]:
                raise InputError(f"tokens {tokens.shape} do not match the residual stream's [batch, pos] {residual.shape[:2]}")
        feed = tokens if tokens is not None else np.zeros(residual.shape[:2], dtype=np.int64)
        mask = check_attention_mask(attention_mask, feed) if attention_mask is not None else None
        if stop_at_layer is not None and first == last:
            return BoundedRun({}, tokens, residual.copy(), mask)
        given = {residual_before(model, first): residual}
    stop_name = residual_before(model, last) if stop_at_layer is not None else None
    wanted = outputs + ([stop_name] if stop_name else [])
    hooked = model.hooked_sites(start_at_layer, stop_at_layer)
    if not wanted:  # return_type=None: TransformerLens runs everything but the unembedding, for the hooks
        hooked = [site for site in hooked if not site.startswith("unembed.")]
        if not hooked:
            return BoundedRun({}, tokens, None, mask)
    results = model.run_graph(feed, wanted, given=given, hooked=hooked, attention_mask=mask)
    return BoundedRun(results, tokens, results.get(stop_name) if stop_name else None, mask)
