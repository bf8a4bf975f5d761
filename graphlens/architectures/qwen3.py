"""Qwen3 (``Qwen3ForCausalLM``): Llama's layout with an RMSNorm on each head's query and key (before rotary).

TransformerLens' ``use_qk_norm``: the norms are ``attn.q_norm`` / ``attn.k_norm`` with their own
``hook_scale`` / ``hook_normalized`` sites and weights (``attn.q_norm.w``), which fold_ln leaves in place.
TL computes them on ``[batch*pos*heads, d_head]``; graphlens' sites keep ``[batch, pos, heads, …]``.
"""

from __future__ import annotations

import dataclasses

from graphlens.architectures.base import Norm
from graphlens.architectures.llama import _ATTN, base_config, llama_like, llama_params
from graphlens.architectures.params import Param, ParamTable

N_CTX = 2048  # TransformerLens caps Qwen3's context


def config_from_hf(hf: dict) -> dict:
    return {**base_config(hf, "Qwen3ForCausalLM"), "n_ctx": N_CTX, "use_qk_norm": True,
            "default_prepend_bos": False, "tokenizer_prepends_bos": True}


QK_NORMS = tuple(Norm(f"attn.{n}", f"{_ATTN}.{n}") for n in ("q_norm", "k_norm"))
QK_NORM_ROWS = tuple(Param(f"{_ATTN}.{n}.weight", f"blocks.{{layer}}.attn.{n}.w") for n in ("q_norm", "k_norm"))

_BASE = llama_like(
    "qwen3",
    "Qwen3ForCausalLM",
    ("Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B"),
    "as Llama, with per-head RMS norms of queries and keys",
    config_from_hf,
    params=ParamTable(llama_params().rows + QK_NORM_ROWS),
)
QWEN3 = dataclasses.replace(_BASE, norms=_BASE.norms + QK_NORMS)
