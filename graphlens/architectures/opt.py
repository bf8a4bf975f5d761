"""OPT (``OPTForCausalLM``, pre-norm sizes): LayerNorm, learned positions (offset by 2), ReLU MLP.

HF scales the query right after its projection, so ``hook_q`` is the projection's output (unscaled, as
TransformerLens'); the MLP runs on flattened tokens, whose sites are viewed back as [batch, pos, …].
"""

from __future__ import annotations

from graphlens.errors import UnsupportedArchitectureError

import numpy as np

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm, standard_dims
from graphlens.architectures.params import Layout, Param, ParamTable, linear_mlp_rows, norm_rows, separate_qkv_rows, unembed_rows

POSITION_OFFSET = 2  # OPT's position embedding table starts with two unused rows


def config_from_hf(hf: dict) -> dict:
    if not hf.get("do_layer_norm_before", True):
        raise UnsupportedArchitectureError("OPT with do_layer_norm_before=False (opt-350m) is not supported: TransformerLens has no post-norm OPT")
    if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
        raise UnsupportedArchitectureError("OPT with word_embed_proj_dim != hidden_size (project_in/out) is not supported")
    return dict(
        **standard_dims(hf, d_mlp_key="ffn_dim"),
        act_fn=hf["activation_function"],
        eps=1e-5,  # HF's nn.LayerNorm default, which TransformerLens states
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="OPTForCausalLM",
    )


_L = "model.decoder.layers.{layer}"
# TL's W_pos starts after the offset rows; they are kept under a name of our own so writing restores the table
_POSITIONS = Layout(lambda a, cfg: (a[:POSITION_OFFSET], a[POSITION_OFFSET:]), lambda t, cfg: np.concatenate(t))

PARAMS = ParamTable((
    Param("model.decoder.embed_tokens.weight", "embed.W_E"),
    Param("model.decoder.embed_positions.weight", ("pos_embed._offset_rows", "pos_embed.W_pos"), _POSITIONS),
    *norm_rows(f"{_L}.self_attn_layer_norm", "blocks.{layer}.ln1"),
    *separate_qkv_rows(f"{_L}.self_attn", "q_proj", "k_proj", "v_proj", "out_proj", biases="error"),
    *norm_rows(f"{_L}.final_layer_norm", "blocks.{layer}.ln2"),
    *linear_mlp_rows(f"{_L}.fc1", f"{_L}.fc2"),
    *norm_rows("model.decoder.final_layer_norm", "ln_final"),
    *unembed_rows(),
))

OPT = Architecture(
    name="opt",
    hf_architectures=("OPTForCausalLM",),
    hub_examples=("facebook/opt-125m", "facebook/opt-1.3b", "facebook/opt-2.7b", "facebook/opt-6.7b",
                  "facebook/opt-13b", "facebook/opt-30b", "facebook/opt-66b"),
    description="LayerNorm, learned positions (offset 2), ReLU MLP, query scaled after its projection",
    marks=(
        Mark("hook_embed", "model.decoder.embed_tokens"),
        Mark("hook_pos_embed", "model.decoder.embed_positions"),
        Mark("hook_resid_pre", _L, at="input"),
        Mark("attn.hook_q", f"{_L}.self_attn.q_proj", heads="n_heads"),
        Mark("hook_attn_out", f"{_L}.self_attn"),
        Mark("hook_resid_mid", f"{_L}.final_layer_norm", at="input"),
        Mark("mlp.hook_pre", f"{_L}.fc1"),
        Mark("mlp.hook_post", f"{_L}.activation_fn"),
        Mark("hook_mlp_out", f"{_L}.fc2"),
        Mark("hook_resid_post", _L),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("ln1", f"{_L}.self_attn_layer_norm"),
        Norm("ln2", f"{_L}.final_layer_norm"),
        Norm("ln_final", "model.decoder.final_layer_norm"),
    ),
    attention=AttentionSites(f"{_L}.self_attn", query_site=None),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
    flat_tokens_in=_L,
)
