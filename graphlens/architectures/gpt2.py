"""GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, fused qkv Conv1D, GELU MLP."""

from __future__ import annotations

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm
from graphlens.architectures.params import (CONV1D_OUT, CONV1D_QKV, CONV1D_QKV_BIAS, QKV, QKV_BIASES, Param, ParamTable,
                                            norm_rows, unembed_rows)

_ACT_FN = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "gelu_fast": "gelu_fast", "silu": "silu"}


def gpt2_style_dims(hf: dict) -> dict:
    """The model dimensions of an HF config that uses GPT-2's key names (n_embd, n_head, n_inner, ...)."""
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    return dict(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_key_value_heads=n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        n_layers=hf["n_layer"],
        n_ctx=hf["n_positions"],
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
        eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def config_from_hf(hf: dict) -> dict:
    return dict(
        **gpt2_style_dims(hf),
        act_fn=_ACT_FN[hf.get("activation_function", "gelu_new")],
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        default_prepend_bos=True,
        tokenizer_prepends_bos=False,
    )


_H = "transformer.h.{layer}"

PARAMS = ParamTable((
    Param("transformer.wte.weight", "embed.W_E"),
    Param("transformer.wpe.weight", "pos_embed.W_pos"),
    *norm_rows(f"{_H}.ln_1", "blocks.{layer}.ln1"),
    Param(f"{_H}.attn.c_attn.weight", QKV, CONV1D_QKV),
    Param(f"{_H}.attn.c_attn.bias", QKV_BIASES, CONV1D_QKV_BIAS),
    Param(f"{_H}.attn.c_proj.weight", "blocks.{layer}.attn.W_O", CONV1D_OUT),
    Param(f"{_H}.attn.c_proj.bias", "blocks.{layer}.attn.b_O"),
    *norm_rows(f"{_H}.ln_2", "blocks.{layer}.ln2"),
    Param(f"{_H}.mlp.c_fc.weight", "blocks.{layer}.mlp.W_in"),  # Conv1D: already [in, out]
    Param(f"{_H}.mlp.c_fc.bias", "blocks.{layer}.mlp.b_in"),
    Param(f"{_H}.mlp.c_proj.weight", "blocks.{layer}.mlp.W_out"),
    Param(f"{_H}.mlp.c_proj.bias", "blocks.{layer}.mlp.b_out"),
    *norm_rows("transformer.ln_f", "ln_final"),
    *unembed_rows(),
))

GPT2 = Architecture(
    name="gpt2",
    hf_architectures=("GPT2LMHeadModel",),
    hub_examples=("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"),
    description="LayerNorm, learned positional embeddings, fused qkv, GELU MLP",
    marks=(
        Mark("hook_embed", "transformer.wte"),
        Mark("hook_pos_embed", "transformer.wpe"),
        Mark("hook_resid_pre", "transformer.h.{layer}", at="input"),
        Mark("hook_attn_out", "transformer.h.{layer}.attn"),
        Mark("hook_resid_mid", "transformer.h.{layer}.ln_2", at="input"),
        Mark("mlp.hook_pre", "transformer.h.{layer}.mlp.c_fc"),
        Mark("mlp.hook_post", "transformer.h.{layer}.mlp.act"),
        Mark("hook_mlp_out", "transformer.h.{layer}.mlp"),
        Mark("hook_resid_post", "transformer.h.{layer}"),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("ln1", "transformer.h.{layer}.ln_1"),
        Norm("ln2", "transformer.h.{layer}.ln_2"),
        Norm("ln_final", "transformer.ln_f"),
    ),
    attention=AttentionSites("transformer.h.{layer}.attn"),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
)
