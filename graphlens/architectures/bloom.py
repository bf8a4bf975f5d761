"""Bloom (``BloomForCausalLM``): ALiBi instead of positional embeddings, a LayerNorm after the embedding,
qkv fused per head, GELU MLP.

HF's BloomAttention computes attention itself (it adds the residual inside, too): the export replaces
its forward with one through graphlens' attention function, which adds TransformerLens' ALiBi bias
``slope_h · (key_pos − query_pos)`` to the scaled scores before the mask. TransformerLens names the
embedding norm ``embed.ln`` (its sites before ``hook_embed``, which is the norm's output); fold_ln leaves
it in place, as TransformerLens does. ``hook_attn_out`` / ``hook_mlp_out`` are the output projections,
before HF adds the residual.
"""

from __future__ import annotations

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm
from graphlens.architectures.params import (LINEAR_OUT, PER_HEAD_QKV, PER_HEAD_QKV_BIAS, QKV, QKV_BIASES, Param,
                                            ParamTable, linear_mlp_rows, norm_rows, unembed_rows)

N_CTX = 2048  # TransformerLens caps Bloom's context (ALiBi has no table of positions)


def config_from_hf(hf: dict) -> dict:
    d_model, n_heads = hf["hidden_size"], hf["n_head"]
    return dict(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_key_value_heads=n_heads,
        d_mlp=4 * d_model,
        n_layers=hf["n_layer"],
        n_ctx=N_CTX,
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
        act_fn="gelu_fast",
        eps=hf["layer_norm_epsilon"],
        normalization_type="LN",
        post_embedding_ln=True,
        positional_embedding_type="alibi",
        default_prepend_bos=False,
        original_architecture="BloomForCausalLM",
    )


_H = "transformer.h.{layer}"
_ATTN = f"{_H}.self_attention"

PARAMS = ParamTable((
    Param("transformer.word_embeddings.weight", "embed.W_E"),
    Param("transformer.word_embeddings_layernorm.weight", "embed.ln.w"),
    Param("transformer.word_embeddings_layernorm.bias", "embed.ln.b"),
    *norm_rows(f"{_H}.input_layernorm", "blocks.{layer}.ln1"),
    Param(f"{_ATTN}.query_key_value.weight", QKV, PER_HEAD_QKV),
    Param(f"{_ATTN}.query_key_value.bias", QKV_BIASES, PER_HEAD_QKV_BIAS),
    Param(f"{_ATTN}.dense.weight", "blocks.{layer}.attn.W_O", LINEAR_OUT),
    Param(f"{_ATTN}.dense.bias", "blocks.{layer}.attn.b_O"),
    *norm_rows(f"{_H}.post_attention_layernorm", "blocks.{layer}.ln2"),
    *linear_mlp_rows(f"{_H}.mlp.dense_h_to_4h", f"{_H}.mlp.dense_4h_to_h"),
    *norm_rows("transformer.ln_f", "ln_final"),
    *unembed_rows(),
))

BLOOM = Architecture(
    name="bloom",
    hf_architectures=("BloomForCausalLM",),
    hub_examples=("bigscience/bloom-560m", "bigscience/bloom-1b1", "bigscience/bloom-1b7", "bigscience/bloom-3b",
                  "bigscience/bloom-7b1"),
    description="ALiBi, LayerNorm after the embedding, qkv fused per head, GELU MLP",
    marks=(
        Mark("hook_embed", "transformer.word_embeddings_layernorm"),
        Mark("hook_resid_pre", _H, at="input"),
        Mark("hook_attn_out", f"{_ATTN}.dense"),
        Mark("hook_resid_mid", f"{_H}.post_attention_layernorm", at="input"),
        Mark("mlp.hook_pre", f"{_H}.mlp.dense_h_to_4h"),
        Mark("mlp.hook_post", f"{_H}.mlp.gelu_impl"),
        Mark("hook_mlp_out", f"{_H}.mlp.dense_4h_to_h"),
        Mark("hook_resid_post", _H),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("embed.ln", "transformer.word_embeddings_layernorm"),
        Norm("ln1", f"{_H}.input_layernorm"),
        Norm("ln2", f"{_H}.post_attention_layernorm"),
        Norm("ln_final", "transformer.ln_f"),
    ),
    attention=AttentionSites(_ATTN, replace=("forward", "bloom")),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
)
