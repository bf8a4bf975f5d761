"""Turning what users pass (strings, lists, numpy, torch tensors) into token arrays and checking them."""

from __future__ import annotations

import numpy as np


def as_numpy(x) -> np.ndarray:
    """numpy from numpy, lists, or torch tensors (without importing torch)."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_tokens(tokens: np.ndarray, d_vocab: int, n_ctx: int) -> np.ndarray:
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, pos]; got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"tokens must be integers; got {tokens.dtype}")
    if tokens.shape[1] == 0:
        raise ValueError("tokens are empty (0 positions)")
    if tokens.shape[1] > n_ctx:
        raise ValueError(
            f"sequence of {tokens.shape[1]} tokens is longer than the model's context n_ctx={n_ctx}; truncate it"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= d_vocab):
        bad = tokens[(tokens < 0) | (tokens >= d_vocab)]
        raise ValueError(f"token ids out of range [0, {d_vocab}): {sorted(set(bad.tolist()))[:10]}")
    return tokens.astype(np.int64, copy=False)
