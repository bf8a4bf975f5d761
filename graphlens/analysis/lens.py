"""Logit lens and per-head direct logit attribution, built from the ActivationCache methods."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Int


def logit_lens(cache, pos_slice=None) -> tuple[Float[np.ndarray, "layers *batch_and_pos d_vocab_out"], list[str]]:
    """Logits read off the residual stream before each layer and after the last (``final_post``).

    Uses ``accumulated_resid(apply_ln=True)`` as TransformerLens does (the final norm recomputed per layer),
    so the ``final_post`` row equals the model's logits.
    """
    model = cache.model
    resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=pos_slice, return_labels=True)
    # one 2-D product: numpy's stacked matmul would stream W_U once per leading index
    logits = resid.reshape(-1, resid.shape[-1]) @ model.W_U + model.b_U
    return logits.reshape(*resid.shape[:-1], -1), labels


def head_logit_attribution(
    cache, tokens: Int[np.ndarray, "batch"] | int, incorrect_tokens=None, pos_slice=-1
) -> Float[np.ndarray, "n_layers n_heads *batch"]:
    """Direct logit attribution of every head to ``tokens`` (at ``pos_slice``), as ``[n_layers, n_heads, ...]``."""
    model = cache.model
    # unscaled: logit_attrs applies the final norm's scale itself (as TransformerLens' does)
    stack = cache.stack_head_results(pos_slice=pos_slice)
    attrs = cache.logit_attrs(stack, tokens, incorrect_tokens, pos_slice=pos_slice)
    return attrs.reshape(model.cfg.n_layers, model.cfg.n_heads, *attrs.shape[1:])


__all__ = ["head_logit_attribution", "logit_lens"]
