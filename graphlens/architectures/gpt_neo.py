"""GPT-Neo (``GPTNeoForCausalLM``): GPT-2's block with separate q/k/v projections, no attention scaling,
and layers alternating global and local (sliding-window) attention.

HF's GPT-Neo computes attention in its own ``_attn`` method (not through transformers' attention
interface): the export replaces that method with graphlens' attention function (``AttentionSites.replace``),
unscaled, with the layer's window.
"""

from __future__ import annotations

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm
from graphlens.architectures.params import (LINEAR_OUT, Param, ParamTable, linear_heads, linear_mlp_rows, norm_rows,
                                            unembed_rows, bias_heads)


def config_from_hf(hf: dict) -> dict:
    d_model, n_heads = hf["hidden_size"], hf["num_heads"]
    return dict(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_key_value_heads=n_heads,
        d_mlp=hf.get("intermediate_size") or 4 * d_model,
        n_layers=hf["num_layers"],
        n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
        eps=hf["layer_norm_epsilon"],
        act_fn=hf["activation_function"],
        normalization_type="LN",
        positional_embedding_type="standard",
        use_attn_scale=False,
        attn_scale=1.0,
        use_local_attn=True,
        window_size=hf["window_size"],
        attn_types=list(hf["attention_layers"]),
        original_architecture="GPTNeoForCausalLM",
    )


_H = "transformer.h.{layer}"
_ATTN = f"{_H}.attn.attention"

PARAMS = ParamTable((
    Param("transformer.wte.weight", "embed.W_E"),
    Param("transformer.wpe.weight", "pos_embed.W_pos"),
    *norm_rows(f"{_H}.ln_1", "blocks.{layer}.ln1"),
    *(row for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")) for row in (
        Param(f"{_ATTN}.{proj}.weight", f"blocks.{{layer}}.attn.W_{name}", linear_heads()),
        Param(f"{_ATTN}.{proj}.bias", f"blocks.{{layer}}.attn.b_{name}", bias_heads(), missing="zeros"))),
    Param(f"{_ATTN}.out_proj.weight", "blocks.{layer}.attn.W_O", LINEAR_OUT),
    Param(f"{_ATTN}.out_proj.bias", "blocks.{layer}.attn.b_O"),
    *norm_rows(f"{_H}.ln_2", "blocks.{layer}.ln2"),
    *linear_mlp_rows(f"{_H}.mlp.c_fc", f"{_H}.mlp.c_proj"),
    *norm_rows("transformer.ln_f", "ln_final"),
    *unembed_rows(),
))

GPT_NEO = Architecture(
    name="gpt_neo",
    hf_architectures=("GPTNeoForCausalLM",),
    hub_examples=("EleutherAI/gpt-neo-125M", "EleutherAI/gpt-neo-1.3B", "EleutherAI/gpt-neo-2.7B",
                  "roneneldan/TinyStories-33M"),
    description="LayerNorm, learned positions, separate q/k/v, unscaled attention alternating global/local",
    marks=(
        Mark("hook_embed", "transformer.wte"),
        Mark("hook_pos_embed", "transformer.wpe"),
        Mark("hook_resid_pre", _H, at="input"),
        Mark("hook_attn_out", f"{_H}.attn"),
        Mark("hook_resid_mid", f"{_H}.ln_2", at="input"),
        Mark("mlp.hook_pre", f"{_H}.mlp.c_fc"),
        Mark("mlp.hook_post", f"{_H}.mlp.act"),
        Mark("hook_mlp_out", f"{_H}.mlp"),
        Mark("hook_resid_post", _H),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("ln1", f"{_H}.ln_1"),
        Norm("ln2", f"{_H}.ln_2"),
        Norm("ln_final", "transformer.ln_f"),
    ),
    attention=AttentionSites(_ATTN, replace=("_attn", "core")),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
    zero_biases=tuple(f"{_ATTN}.{proj}" for proj in ("q_proj", "k_proj", "v_proj")),
)
