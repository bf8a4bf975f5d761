"""Gemma 3 text model (``Gemma3ForCausalLM``): Gemma 2's block (norms before and after attention and MLP,
local and global layers) with Qwen3-style per-head q/k RMS norms (Gemma's ``1 + w``) and its own rotary
base per layer type (``rotary_base`` global, ``rotary_base_local`` local); no soft caps by default.

The graph runs HF's rotary embeddings for each layer type; the config states the bases as TransformerLens.
"""

from __future__ import annotations

import dataclasses

from graphlens.architectures import gemma, gemma2
from graphlens.architectures.llama import _ATTN
from graphlens.architectures.params import Param, ParamTable, offset
from graphlens.architectures.qwen3 import QK_NORMS


def config_from_hf(hf: dict) -> dict:
    rope = hf.get("rope_parameters") or {}
    global_theta = (rope.get("full_attention") or {}).get("rope_theta", hf.get("rope_theta", 1_000_000.0))
    local_theta = (rope.get("sliding_attention") or {}).get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    cfg = gemma2.config_from_hf({**hf, "rope_theta": global_theta, "rope_parameters": None})
    return {**cfg, "original_architecture": "Gemma3ForCausalLM", "rotary_base": global_theta,
            "rotary_base_local": local_theta, "use_qk_norm": True}


_QK_ROWS = tuple(Param(f"{_ATTN}.{n}.weight", f"blocks.{{layer}}.attn.{n}.w", offset(gemma.NORM_OFFSET))
                 for n in ("q_norm", "k_norm"))

GEMMA3 = dataclasses.replace(
    gemma2.GEMMA2,
    name="gemma3",
    hf_architectures=("Gemma3ForCausalLM",),
    hub_examples=("google/gemma-3-270m", "google/gemma-3-1b-pt", "google/gemma-3-1b-it"),
    description="as Gemma 2 (local and global layers), with per-head q/k RMS norms and a rotary base per layer type",
    config_from_hf=config_from_hf,
    # HF normalises [batch, heads, pos, d_head], by 1 + w
    norms=gemma2.GEMMA2.norms + tuple(dataclasses.replace(n, heads_first=True, weight_offset=gemma.NORM_OFFSET)
                                      for n in QK_NORMS),
    read_weights=ParamTable(gemma2.PARAMS.rows + _QK_ROWS).read,
    write_weights=ParamTable(gemma2.PARAMS.rows + _QK_ROWS).write,
)
