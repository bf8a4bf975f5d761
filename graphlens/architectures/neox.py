"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): parallel attention and MLP, partial rotary, fused qkv per head.

``use_parallel_residual=False`` (sequential blocks) is its own adapter, ``gpt_neox_sequential``: the MLP
reads the residual stream after attention, so the block has ``hook_resid_mid`` (the input of HF's
``post_attention_layernorm``), as TransformerLens' ``parallel_attn_mlp=False``.
"""

from __future__ import annotations

import dataclasses

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm, rope_parameters, standard_dims
from graphlens.architectures.params import (LINEAR_OUT, PER_HEAD_QKV, PER_HEAD_QKV_BIAS, QKV, QKV_BIASES, Param, ParamTable,
                                            linear_mlp_rows, norm_rows, unembed_rows)


def _parallel(hf: dict) -> bool:
    return bool(hf.get("use_parallel_residual", True))


def config_from_hf(hf: dict) -> dict:
    dims = standard_dims(hf)
    return dict(
        **dims,
        act_fn=hf["hidden_act"],
        eps=hf["layer_norm_eps"],
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=round(rope_parameters(hf)["partial_rotary_factor"] * dims["d_head"]),
        rotary_base=rope_parameters(hf)["rope_theta"],
        rotary_adjacent_pairs=False,
        parallel_attn_mlp=_parallel(hf),
        original_architecture="GPTNeoXForCausalLM",
        default_prepend_bos=False,
    )


_L = "gpt_neox.layers.{layer}"
_QKV = f"{_L}.attention.query_key_value"

PARAMS = ParamTable((
    Param("gpt_neox.embed_in.weight", "embed.W_E"),
    *norm_rows(f"{_L}.input_layernorm", "blocks.{layer}.ln1"),
    Param(f"{_QKV}.weight", QKV, PER_HEAD_QKV),
    Param(f"{_QKV}.bias", QKV_BIASES, PER_HEAD_QKV_BIAS, missing="zeros"),
    Param(f"{_L}.attention.dense.weight", "blocks.{layer}.attn.W_O", LINEAR_OUT),
    Param(f"{_L}.attention.dense.bias", "blocks.{layer}.attn.b_O", missing="zeros"),
    *norm_rows(f"{_L}.post_attention_layernorm", "blocks.{layer}.ln2"),
    *linear_mlp_rows(f"{_L}.mlp.dense_h_to_4h", f"{_L}.mlp.dense_4h_to_h"),
    *norm_rows("gpt_neox.final_layer_norm", "ln_final"),
    *unembed_rows(),
))

GPT_NEOX = Architecture(
    name="gpt_neox",
    hf_architectures=("GPTNeoXForCausalLM",),
    hub_examples=("EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-410m", "EleutherAI/pythia-1b",
                  "EleutherAI/pythia-1.4b", "EleutherAI/pythia-2.8b", "EleutherAI/pythia-6.9b", "EleutherAI/pythia-12b",
                  "EleutherAI/gpt-neox-20b"),
    description="LayerNorm, parallel attention and MLP, partial rotary, qkv fused per head",
    marks=(
        Mark("hook_embed", "gpt_neox.embed_in"),
        Mark("hook_resid_pre", "gpt_neox.layers.{layer}", at="input"),
        Mark("attn.hook_q", _QKV, heads="n_heads", part=(0, 3)),
        Mark("attn.hook_k", _QKV, heads="n_heads", part=(1, 3)),
        Mark("hook_attn_out", "gpt_neox.layers.{layer}.attention"),
        Mark("mlp.hook_pre", "gpt_neox.layers.{layer}.mlp.dense_h_to_4h"),
        Mark("mlp.hook_post", "gpt_neox.layers.{layer}.mlp.act"),
        Mark("hook_mlp_out", "gpt_neox.layers.{layer}.mlp"),
        Mark("hook_resid_post", "gpt_neox.layers.{layer}"),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("ln1", "gpt_neox.layers.{layer}.input_layernorm"),
        Norm("ln2", "gpt_neox.layers.{layer}.post_attention_layernorm"),
        Norm("ln_final", "gpt_neox.final_layer_norm"),
    ),
    attention=AttentionSites("gpt_neox.layers.{layer}.attention", "attn.hook_rot_q", "attn.hook_rot_k"),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
    zero_biases=(_QKV, "gpt_neox.layers.{layer}.attention.dense"),
    accepts=_parallel,
)

GPT_NEOX_SEQUENTIAL = dataclasses.replace(
    GPT_NEOX,
    name="gpt_neox_sequential",
    hub_examples=(),
    description="GPT-NeoX with sequential attention then MLP (use_parallel_residual=False)",
    marks=GPT_NEOX.marks + (Mark("hook_resid_mid", "gpt_neox.layers.{layer}.post_attention_layernorm", at="input"),),
    accepts=lambda hf: not _parallel(hf),
)
