"""Llama (``LlamaForCausalLM``): RMSNorm, rotary, grouped-query attention, gated SiLU MLP, no biases.

``llama_like`` builds the adapter for the families that share Llama's module layout (Mistral, Qwen2).
"""

from __future__ import annotations

from typing import Callable

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm, rope_parameters, standard_dims
from graphlens.architectures.params import (SAME, TRANSPOSED, Layout, Param, ParamTable, linear_mlp_rows, norm_rows,
                                            separate_qkv_rows, unembed_rows)

_ATTN = "model.layers.{layer}.self_attn"
_MLP = "model.layers.{layer}.mlp"


def base_config(hf: dict, original_architecture: str) -> dict:
    """The HookedTransformerConfig fields Llama-layout families share (TL's convert_hf_model_config)."""
    dims = standard_dims(hf)
    return dict(
        **dims,
        act_fn=hf["hidden_act"],
        eps=hf["rms_norm_eps"],
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=dims["d_head"],
        rotary_base=rope_parameters(hf)["rope_theta"],
        rotary_adjacent_pairs=False,
        final_rms=True,
        gated_mlp=True,
        original_architecture=original_architecture,
    )


def _llama3_rope(hf: dict) -> dict:
    """TransformerLens' fields for Llama 3's NTK-by-parts rotary scaling (the graph runs HF's rotary)."""
    rope = rope_parameters(hf)
    if str(rope.get("rope_type", rope.get("type", ""))).lower() != "llama3":
        return {}
    return dict(
        use_NTK_by_parts_rope=True,
        NTK_original_ctx_len=rope.get("original_max_position_embeddings", hf["max_position_embeddings"]),
        NTK_by_parts_low_freq_factor=rope.get("low_freq_factor", 1.0),
        NTK_by_parts_high_freq_factor=rope.get("high_freq_factor", 4.0),
        NTK_by_parts_factor=rope.get("factor", 1.0),
    )


def config_from_hf(hf: dict) -> dict:
    return {**base_config(hf, "LlamaForCausalLM"), **_llama3_rope(hf)}


_LAYER = "model.layers.{layer}"
NORMS = (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"))  # (TL name, HF module in the layer)


def llama_params(norms: tuple[tuple[str, str], ...] = NORMS, norm_layout: Layout = SAME,
                 embed_layout: Layout = SAME) -> ParamTable:
    """The parameter table of Llama's module layout (biases HF lacks are TL zeros)."""
    return ParamTable((
        Param("model.embed_tokens.weight", "embed.W_E", embed_layout),
        *(row for tl, hf in norms for row in norm_rows(f"{_LAYER}.{hf}", f"blocks.{{layer}}.{tl}", False, norm_layout)),
        *separate_qkv_rows(_ATTN, "q_proj", "k_proj", "v_proj", "o_proj", kv_heads="n_key_value_heads"),
        *linear_mlp_rows(f"{_MLP}.up_proj", f"{_MLP}.down_proj", biases="zeros"),
        Param(f"{_MLP}.gate_proj.weight", "blocks.{layer}.mlp.W_gate", TRANSPOSED),
        *norm_rows("model.norm", "ln_final", False, norm_layout),
        *unembed_rows(),
    ))


def llama_like(
    name: str,
    hf_architecture: str,
    hub_examples: tuple[str, ...],
    description: str,
    config: Callable[[dict], dict],
    zero_biases: tuple[str, ...] = (),
    params: ParamTable = llama_params(),
    norm_weight_offset: float = 0.0,
) -> Architecture:
    """An adapter for a family with Llama's modules (``model.layers.L.self_attn.q_proj`` …)."""
    return Architecture(
        name=name,
        hf_architectures=(hf_architecture,),
        hub_examples=hub_examples,
        description=description,
        marks=(
            Mark("hook_embed", "model.embed_tokens"),
            Mark("hook_resid_pre", "model.layers.{layer}", at="input"),
            Mark("attn.hook_q", f"{_ATTN}.q_proj", heads="n_heads"),
            Mark("attn.hook_k", f"{_ATTN}.k_proj", heads="n_key_value_heads"),
            Mark("hook_attn_out", _ATTN),
            Mark("hook_resid_mid", "model.layers.{layer}.post_attention_layernorm", at="input"),
            Mark("mlp.hook_pre", f"{_MLP}.gate_proj"),
            Mark("mlp.hook_pre_linear", f"{_MLP}.up_proj"),
            Mark("mlp.hook_post", f"{_MLP}.down_proj", at="input"),
            Mark("hook_mlp_out", _MLP),
            Mark("hook_resid_post", "model.layers.{layer}"),
            Mark("unembed.hook_in", "lm_head", at="input"),
            Mark("unembed.hook_out", "lm_head"),
        ),
        norms=(
            Norm("ln1", "model.layers.{layer}.input_layernorm", norm_weight_offset),
            Norm("ln2", "model.layers.{layer}.post_attention_layernorm", norm_weight_offset),
            Norm("ln_final", "model.norm", norm_weight_offset),
        ),
        attention=AttentionSites(_ATTN, "attn.hook_rot_q", "attn.hook_rot_k"),
        config_from_hf=config,
        read_weights=params.read,
        write_weights=params.write,
        zero_biases=zero_biases,
    )


LLAMA = llama_like(
    "llama",
    "LlamaForCausalLM",
    ("meta-llama/Llama-2-7b-hf", "meta-llama/Meta-Llama-3-8B", "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
     "princeton-nlp/Sheared-LLaMA-1.3B", "01-ai/Yi-6B"),
    "RMSNorm, rotary, grouped-query attention, gated SiLU MLP, no biases",
    config_from_hf,
)
