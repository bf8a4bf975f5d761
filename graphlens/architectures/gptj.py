"""GPT-J (``GPTJForCausalLM``): parallel attention and MLP sharing one LayerNorm, rotary on adjacent pairs.

TransformerLens gives the block two norms (ln2 a copy of ln1): the export applies HF's ``ln_1`` a second
time for the MLP, so ``ln2`` has its own sites, and the state dict's ln2 is ln1's weights.
"""

from __future__ import annotations

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm
from graphlens.architectures.params import Layout, Param, ParamTable, linear_mlp_rows, norm_rows, separate_qkv_rows, unembed_rows
from graphlens.architectures.gpt2 import gpt2_style_dims


def config_from_hf(hf: dict) -> dict:
    return dict(
        **gpt2_style_dims(hf),
        act_fn=hf["activation_function"],
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=hf["rotary_dim"],
        rotary_adjacent_pairs=True,
        parallel_attn_mlp=True,
        original_architecture="GPTJForCausalLM",
    )


_H = "transformer.h.{layer}"
_ATTN = f"{_H}.attn"
# HF's one ln_1 is TL's ln1 and ln2 (equal); writing takes ln1's (fold_ln removes both)
SHARED_NORM = Layout(lambda a, cfg: (a, a), lambda t, cfg: t[0])


def shared_norm_rows(hf_module: str) -> tuple[Param, ...]:
    """One HF LayerNorm read by attention and MLP: TL's ln1 and ln2 (skipped once fold_ln removed them)."""
    return tuple(Param(f"{hf_module}.{p}", (f"blocks.{{layer}}.ln1.{tl}", f"blocks.{{layer}}.ln2.{tl}"), SHARED_NORM,
                       missing="skip") for p, tl in (("weight", "w"), ("bias", "b")))

PARAMS = ParamTable((
    Param("transformer.wte.weight", "embed.W_E"),
    *shared_norm_rows(f"{_H}.ln_1"),
    *separate_qkv_rows(_ATTN, "q_proj", "k_proj", "v_proj", "out_proj"),
    *linear_mlp_rows(f"{_H}.mlp.fc_in", f"{_H}.mlp.fc_out"),
    *norm_rows("transformer.ln_f", "ln_final"),
    *unembed_rows(),
))

GPTJ = Architecture(
    name="gptj",
    hf_architectures=("GPTJForCausalLM",),
    hub_examples=("EleutherAI/gpt-j-6B",),
    description="LayerNorm shared by parallel attention and MLP, rotary on adjacent pairs, no attention biases",
    marks=(
        Mark("hook_embed", "transformer.wte"),
        Mark("hook_resid_pre", "transformer.h.{layer}", at="input"),
        Mark("attn.hook_q", f"{_ATTN}.q_proj", heads="n_heads"),
        Mark("attn.hook_k", f"{_ATTN}.k_proj", heads="n_heads"),
        Mark("hook_attn_out", _ATTN),
        Mark("mlp.hook_pre", "transformer.h.{layer}.mlp.fc_in"),
        Mark("mlp.hook_post", "transformer.h.{layer}.mlp.act"),
        Mark("hook_mlp_out", "transformer.h.{layer}.mlp"),
        Mark("hook_resid_post", "transformer.h.{layer}"),
        Mark("unembed.hook_in", "lm_head", at="input"),
        Mark("unembed.hook_out", "lm_head"),
    ),
    norms=(
        Norm("ln1", "transformer.h.{layer}.ln_1"),
        Norm("ln2", "transformer.h.{layer}.ln_1", feeds="transformer.h.{layer}.mlp"),
        Norm("ln_final", "transformer.ln_f"),
    ),
    attention=AttentionSites(_ATTN, "attn.hook_rot_q", "attn.hook_rot_k"),
    config_from_hf=config_from_hf,
    read_weights=PARAMS.read,
    write_weights=PARAMS.write,
    zero_biases=tuple(f"{_ATTN}.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj")),
)
