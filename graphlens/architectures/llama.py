"""Llama (``LlamaForCausalLM``): RMSNorm, rotary, grouped-query attention, gated SiLU MLP, no biases.

``llama_like`` builds the adapter for the families that share Llama's module layout (Mistral, Qwen2).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from graphlens.architectures.base import (
    Architecture,
    AttentionSites,
    Mark,
    Norm,
    Params,
    TLWeights,
    bias_or_zeros,
    heads_from_linear,
    heads_to_linear,
    rope_parameters,
)

_ATTN = "model.layers.{layer}.self_attn"
_MLP = "model.layers.{layer}.mlp"


def base_config(hf: dict, original_architecture: str) -> dict:
    """The HookedTransformerConfig fields Llama-layout families share (TL's convert_hf_model_config)."""
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    return dict(
        d_model=hf["hidden_size"],
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
        act_fn=hf["hidden_act"],
        eps=hf["rms_norm_eps"],
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=d_head,
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


def _layer(layer: int) -> str:
    return f"model.layers.{layer}"


NORMS = (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm"))


def read_weights(p: Params, cfg: dict, norms: tuple[tuple[str, str], ...] = NORMS) -> TLWeights:
    """HF params → TL state dict; ``norms``: (TL name, HF module in the layer) of each block norm."""
    n, n_kv, h, d, d_mlp = cfg["n_heads"], cfg["n_key_value_heads"], cfg["d_head"], cfg["d_model"], cfg["d_mlp"]
    dtype = p["model.embed_tokens.weight"].dtype
    tl: TLWeights = {
        "embed.W_E": p["model.embed_tokens.weight"],
        "unembed.W_U": p["lm_head.weight"].T,
        "unembed.b_U": p["lm_head.bias"],
    }
    if "model.norm.weight" in p:
        tl["ln_final.w"] = p["model.norm.weight"]
    for layer in range(cfg["n_layers"]):
        hf, b = _layer(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in norms:
            if f"{hf}.{hf_ln}.weight" in p:
                tl[f"{b}.{tl_ln}.w"] = p[f"{hf}.{hf_ln}.weight"]
        for name, proj, heads in (("Q", "q_proj", n), ("K", "k_proj", n_kv), ("V", "v_proj", n_kv)):
            tl[f"{b}.attn.W_{name}"] = heads_from_linear(p[f"{hf}.self_attn.{proj}.weight"], heads)
            tl[f"{b}.attn.b_{name}"] = bias_or_zeros(p, f"{hf}.self_attn.{proj}.bias", (heads * h,), dtype).reshape(heads, h)
        tl[f"{b}.attn.W_O"] = p[f"{hf}.self_attn.o_proj.weight"].T.reshape(n, h, d)
        tl[f"{b}.attn.b_O"] = bias_or_zeros(p, f"{hf}.self_attn.o_proj.bias", (d,), dtype)
        tl[f"{b}.mlp.W_in"] = p[f"{hf}.mlp.up_proj.weight"].T
        tl[f"{b}.mlp.W_gate"] = p[f"{hf}.mlp.gate_proj.weight"].T
        tl[f"{b}.mlp.b_in"] = bias_or_zeros(p, f"{hf}.mlp.up_proj.bias", (d_mlp,), dtype)
        tl[f"{b}.mlp.W_out"] = p[f"{hf}.mlp.down_proj.weight"].T
        tl[f"{b}.mlp.b_out"] = bias_or_zeros(p, f"{hf}.mlp.down_proj.bias", (d,), dtype)
    return tl


def write_weights(tl: TLWeights, cfg: dict, norms: tuple[tuple[str, str], ...] = NORMS) -> dict[str, np.ndarray]:
    d = cfg["d_model"]
    p = {
        "model.embed_tokens.weight": tl["embed.W_E"],
        "lm_head.weight": tl["unembed.W_U"].T,
        "lm_head.bias": tl["unembed.b_U"],
    }
    if "ln_final.w" in tl:
        p["model.norm.weight"] = tl["ln_final.w"]
    for layer in range(cfg["n_layers"]):
        hf, b = _layer(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in norms:
            if f"{b}.{tl_ln}.w" in tl:
                p[f"{hf}.{hf_ln}.weight"] = tl[f"{b}.{tl_ln}.w"]
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            p[f"{hf}.self_attn.{proj}.weight"] = heads_to_linear(tl[f"{b}.attn.W_{name}"])
            p[f"{hf}.self_attn.{proj}.bias"] = tl[f"{b}.attn.b_{name}"].reshape(-1)
        p[f"{hf}.self_attn.o_proj.weight"] = tl[f"{b}.attn.W_O"].reshape(-1, d).T
        p[f"{hf}.self_attn.o_proj.bias"] = tl[f"{b}.attn.b_O"]
        p[f"{hf}.mlp.up_proj.weight"] = tl[f"{b}.mlp.W_in"].T
        p[f"{hf}.mlp.gate_proj.weight"] = tl[f"{b}.mlp.W_gate"].T
        p[f"{hf}.mlp.up_proj.bias"] = tl[f"{b}.mlp.b_in"]
        p[f"{hf}.mlp.down_proj.weight"] = tl[f"{b}.mlp.W_out"].T
        p[f"{hf}.mlp.down_proj.bias"] = tl[f"{b}.mlp.b_out"]
    return p


def llama_like(
    name: str,
    hf_architecture: str,
    hub_examples: tuple[str, ...],
    description: str,
    config: Callable[[dict], dict],
    zero_biases: tuple[str, ...] = (),
    read: Callable[[Params, dict], TLWeights] = read_weights,
    write: Callable[[TLWeights, dict], dict[str, np.ndarray]] = write_weights,
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
        read_weights=read,
        write_weights=write,
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
