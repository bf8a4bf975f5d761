"""OLMo (``OlmoForCausalLM``, allenai/OLMo-1B-hf, OLMo-7B-hf): Llama's modules with LayerNorms that have no
weight and no bias (TransformerLens: ``normalization_type="LN"`` with unit weights, zero biases).

``clip_qkv`` clamps q/k/v after their projections: hook_q/hook_k are before the clamp as in
TransformerLens, hook_v after it (TransformerLens: before), so models with clip_qkv differ at hook_v.
"""

from __future__ import annotations

from graphlens.architectures.llama import base_config, llama_like


def config_from_hf(hf: dict) -> dict:
    # TransformerLens' OLMo entries: LayerNorm (eps 1e-5, fixed in HF's module), ln_final not RMS
    return {**base_config({**hf, "rms_norm_eps": 1e-5}, "OlmoForCausalLM"), "normalization_type": "LN", "eps": 1e-5, "final_rms": False,
            "clip_qkv": hf.get("clip_qkv"), "attn_types": ["global"] * hf["num_hidden_layers"]}


OLMO = llama_like(
    "olmo",
    "OlmoForCausalLM",
    ("allenai/OLMo-1B-hf", "allenai/OLMo-7B-hf", "allenai/OLMo-7B-0424-hf"),
    "as Llama, with LayerNorms without parameters",
    config_from_hf,
)
