"""Turning what users pass (strings, lists, numpy, torch tensors) into token arrays and checking them."""

from __future__ import annotations

import numpy as np
from jaxtyping import Int

from graphlens.errors import InputError, InputTypeError


def as_numpy(x) -> np.ndarray:
    """numpy from numpy, lists, or torch tensors (without importing torch)."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as err:  # ragged lists and other things numpy cannot stack
        raise InputError(f"cannot make an array of this {type(x).__name__} ({err}); give a rectangular array") from None


def check_tokens(tokens: np.ndarray, d_vocab: int, n_ctx: int) -> np.ndarray:
    """``tokens`` as int64 ``[batch, pos]`` (a 1-d sequence gets a batch axis); ids in [0, d_vocab), pos ≤ n_ctx."""
    tokens = as_numpy(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise InputError(f"tokens must have shape [batch, pos]; got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise InputTypeError(f"tokens must be integers; got {tokens.dtype}")
    if tokens.shape[1] == 0:
        raise InputError("tokens are empty (0 positions)")
    if tokens.shape[0] == 0:
        raise InputError("tokens hold no sequences (batch of 0)")
    if tokens.shape[1] > n_ctx:
        raise InputError(
            f"sequence of {tokens.shape[1]} tokens is longer than the model's context n_ctx={n_ctx}; truncate it"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= d_vocab):
        bad = tokens[(tokens < 0) | (tokens >= d_vocab)]
        raise InputError(f"token ids out of range [0, {d_vocab}): {sorted(set(bad.tolist()))[:10]}")
    return tokens.astype(np.int64, copy=False)


def attention_mask_for(
    tokens: Int[np.ndarray, "batch pos"], pad_token_id: int | None, bos_token_id: int | None,
    prepend_bos: bool, padding_side: str,
) -> Int[np.ndarray, "batch pos"]:
    """Which tokens are real (1) or padding (0), as TransformerLens' ``utils.get_attention_mask``.

    Only the padding run at the padded end counts; with left padding and BOS == pad, the BOS right
    before the first real token is kept.
    """
    mask = np.ones_like(tokens, dtype=np.int64)
    if pad_token_id is None:
        return mask
    real = tokens != pad_token_id
    if padding_side == "right":
        mask[np.cumsum(real[:, ::-1], axis=1)[:, ::-1] == 0] = 0
        return mask
    leading = np.cumsum(real, axis=1) == 0
    mask[leading] = 0
    if prepend_bos and bos_token_id == pad_token_id:
        bos_at = leading.sum(-1) - 1
        rows = np.nonzero(bos_at >= 0)[0]
        mask[rows, bos_at[rows]] = 1
    return mask


def offset_position_ids(attention_mask: Int[np.ndarray, "batch pos"]) -> Int[np.ndarray, "batch pos"]:
    """Positions counted from each row's first real token; padding before it gets 0 (TransformerLens)."""
    return np.maximum(np.cumsum(attention_mask, axis=1) - 1, 0)


def check_attention_mask(mask, tokens: Int[np.ndarray, "batch pos"]) -> Int[np.ndarray, "batch pos"]:
    """A user's ``attention_mask`` as int64 ``[batch, pos]`` of 0/1, checked against ``tokens``' shape."""
    mask = as_numpy(mask)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.shape != tokens.shape:
        raise InputError(f"attention_mask has shape {mask.shape}; it must match the tokens' [batch, pos] {tokens.shape}")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)) or (mask.size and not np.isin(mask, (0, 1)).all()):
        raise InputError("attention_mask must hold 0 (padding) and 1 (real token), as ints or bools")
    return mask.astype(np.int64)
