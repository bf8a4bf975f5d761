"""Sliding-window (local) attention in TransformerLens' config fields.

The graph masks each layer as HF does (the ``sliding_window`` HF passes to the attention function);
these fields only state it in ``model.cfg``: ``use_local_attn``, ``window_size`` and ``attn_types``
("local" / "global" per layer).
"""

from __future__ import annotations

ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def local_attention(window: int | None, layer_types: list[str] | None, n_layers: int) -> dict:
    """TL's local-attention fields for ``window`` (None: none) over HF ``layer_types`` (None: all sliding)."""
    if not window:
        return dict(use_local_attn=False, window_size=None, attn_types=None)
    types = layer_types or ["sliding_attention"] * n_layers
    return dict(use_local_attn=True, window_size=window, attn_types=[ATTN_TYPES[t] for t in types])
