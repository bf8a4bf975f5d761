"""Phi (``PhiForCausalLM``, microsoft/phi-1 … phi-2): GPT-J's block with HF's Llama-style names.

Parallel attention and MLP reading one LayerNorm (TransformerLens' ln2 is a copy of ln1, as for GPT-J),
partial rotary, q/k/v and output biases, a GELU MLP, and an lm_head with a bias.
"""

from __future__ import annotations

from graphlens.architectures import neox
from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm
from graphlens.architectures.gptj import shared_norm_rows
from graphlens.architectures.params import Param, ParamTable, linear_mlp_rows, norm_rows, separate_qkv_rows, unembed_rows
from graphlens.errors import UnsupportedArchitectureError


def config_from_hf(hf: dict) -> dict:
    if hf.get("qk_layernorm"):
        raise UnsupportedArchitectureError("Phi with qk_layernorm=True is not supported (TransformerLens 3.9 has no such norms)")
    # GPT-NeoX's fields and key names (LayerNorm eps, partial rotary); Phi has no use_parallel_residual: parallel
    return {**neox.config_from_hf(hf), "original_architecture": "PhiForCausalLM"}


_L = "model.layers.{layer}"
_ATTN = f"{_L}.self_attn"

PARAMS = ParamTable((
    Param("model.embed_tokens.weight", "embed.W_E"),
    *shared_norm_rows(f"{_L}.input_layernorm"),
    *separate_qkv_rows(_ATTN, "q_proj", "k_proj", "v_proj", "dense"),
    *linear_mlp_rows(f"{_L}.mlp.fc1", f"{_L}.mlp.fc2"),
    *norm_rows("model.final_layernorm", "ln_final"),
    *unembed_rows(),
))

PHI = Architecture(
    name="phi",
    hf_architectures=("PhiForCausalLM",),
    hub_examples=("microsoft/phi-1", "microsoft/phi-1_5", "microsoft/phi-2"),
    description="LayerNorm shared by parallel attention and MLP, partial rotary, biases everywhere",
    marks=(
        Mark("hook_embed", "model.embed_tokens"),
        Mark("hook_resid_pre", _L, at="input"),
        Mark("attn.hook_q", f"{_ATTN}.q_proj", heads="n_heads"),
        Mark("attn.hook_k", f"{_ATTN}.k_proj", heads="n_heads"),
        Mark("hook_attn_out", _ATTN),
        Mark("mlp.hook_pre", f"{_L}.mlp.fc1"),
        Mark("mlp.hook_post", f"{_L}.mlp.fc2", at="input"),
        Mark("hook_mlp_out", f"{_L}.mlp"),
        Mark("hook_resid_post", _L),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("ln1", f"{_L}.input_layernorm"),
        Norm("ln2", f"{_L}.input_layernorm", feeds=f"{_L}.mlp"),
        Norm("ln_final", "model.final_layernorm"),
    ),
    attention=AttentionSites(_ATTN, "attn.hook_rot_q", "attn.hook_rot_k"),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
)
