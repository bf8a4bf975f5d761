"""Attention modules that compute attention themselves (not through transformers' attention interface):
the export replaces their method with one that runs graphlens' attention function (``instrument._attention``),
so their scores, pattern and z are sites like everyone else's. An adapter names the method and the
replacement in ``AttentionSites.replace``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from graphlens.errors import ExportError
from graphlens.export.instrument import _attention


def _scaling(cfg: dict) -> float:
    """1/attn_scale, or 1 when use_attn_scale is off (GPT-Neo)."""
    return 1.0 / float(cfg.get("attn_scale", cfg["d_head"] ** 0.5)) if cfg.get("use_attn_scale", True) else 1.0


def _window(cfg: dict, layer: int) -> int | None:
    types = cfg.get("attn_types")
    return cfg["window_size"] if cfg.get("use_local_attn") and types and types[layer] == "local" else None


def _core(module: nn.Module, cfg: dict, layer: int) -> Callable:
    """A core method ``(query, key, value [b, h, pos, d_head], mask) → (output [b, h, q, d_head], pattern)``."""
    scaling, window = _scaling(cfg), _window(cfg, layer)

    def core(query, key, value, attention_mask=None, *args, **kwargs):
        z, pattern = _attention(module, query, key, value, attention_mask, scaling=scaling, sliding_window=window)
        return z.transpose(1, 2), pattern  # back to [b, h, q, d_head], as the method returns it

    return core


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes as HF's Bloom builds them (for a power of two: 2^(-8/n)·(1…n), TransformerLens'
    values; otherwise the interleaved extra slopes HF adds, where TransformerLens' formula differs)."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-8.0 / closest)
    slopes = [base ** i for i in range(1, closest + 1)]
    if closest != n_heads:
        extra = 2.0 ** (-4.0 / closest)
        slopes += [extra ** i for i in range(1, 2 * (n_heads - closest), 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def _bloom_forward(module: nn.Module, cfg: dict, layer: int) -> Callable:
    """BloomAttention.forward: fused qkv per head, ALiBi scores; returns dense(z) + residual as HF does."""
    slopes = alibi_slopes(module.num_heads)

    def forward(hidden_states, residual, alibi=None, attention_mask=None, layer_past=None, use_cache=False,
                output_attentions=False, **kwargs):
        batch, pos, _ = hidden_states.shape
        fused = module.query_key_value(hidden_states).view(batch, pos, module.num_heads, 3, module.head_dim)
        query, key, value = (fused[..., i, :].transpose(1, 2) for i in range(3))
        z, pattern = _attention(module, query, key, value, attention_mask, scaling=module.inv_norm_factor,
                                alibi=slopes)
        return module.dense(z.reshape(batch, pos, -1)) + residual, pattern

    return forward


_REPLACEMENTS = {"core": _core, "bloom": _bloom_forward}


def replace_attention(module: nn.Module, method: str, replacement: str, cfg: dict, layer: int) -> None:
    """Replace ``module.<method>`` with graphlens' ``replacement`` (a key of the table above)."""
    if replacement not in _REPLACEMENTS or not hasattr(module, method):
        raise ExportError(f"cannot replace {type(module).__name__}.{method} with {replacement!r} "
                          f"(known replacements: {', '.join(_REPLACEMENTS)})")
    setattr(module, method, _REPLACEMENTS[replacement](module, cfg, layer))
