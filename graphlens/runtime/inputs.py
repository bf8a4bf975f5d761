"""Turning what users pass (strings, lists, numpy, torch tensors) into token arrays and checking them."""

from __future__ import annotations

import numpy as np
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
