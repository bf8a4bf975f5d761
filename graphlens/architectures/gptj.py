"""GPT-J (``GPTJForCausalLM``): parallel attention and MLP sharing one LayerNorm, rotary on adjacent pairs.

TransformerLens gives the block two norms (ln2 a copy of ln1): the export applies HF's ``ln_1`` a second
time for the MLP, so ``ln2`` has its own sites, and the state dict's ln2 is ln1's weights.
"""

from __future__ import annotations

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
)
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


def _block(layer: int) -> str:
    return f"transformer.h.{layer}"


def read_weights(p: Params, cfg: dict) -> TLWeights:
    n, h, d = cfg["n_heads"], cfg["d_head"], cfg["d_model"]
    dtype = p["transformer.wte.weight"].dtype
    tl: TLWeights = {
        "embed.W_E": p["transformer.wte.weight"],
        "unembed.W_U": p["lm_head.weight"].T,
        "unembed.b_U": p["lm_head.bias"],
    }
    if "transformer.ln_f.weight" in p:
        tl["ln_final.w"], tl["ln_final.b"] = p["transformer.ln_f.weight"], p["transformer.ln_f.bias"]
    for layer in range(cfg["n_layers"]):
        hf, b = _block(layer), f"blocks.{layer}"
        if f"{hf}.ln_1.weight" in p:
            for ln in ("ln1", "ln2"):
                tl[f"{b}.{ln}.w"], tl[f"{b}.{ln}.b"] = p[f"{hf}.ln_1.weight"], p[f"{hf}.ln_1.bias"]
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            tl[f"{b}.attn.W_{name}"] = heads_from_linear(p[f"{hf}.attn.{proj}.weight"], n)
            tl[f"{b}.attn.b_{name}"] = bias_or_zeros(p, f"{hf}.attn.{proj}.bias", (n * h,), dtype).reshape(n, h)
        tl[f"{b}.attn.W_O"] = p[f"{hf}.attn.out_proj.weight"].T.reshape(n, h, d)
        tl[f"{b}.attn.b_O"] = bias_or_zeros(p, f"{hf}.attn.out_proj.bias", (d,), dtype)
        tl[f"{b}.mlp.W_in"], tl[f"{b}.mlp.b_in"] = p[f"{hf}.mlp.fc_in.weight"].T, p[f"{hf}.mlp.fc_in.bias"]
        tl[f"{b}.mlp.W_out"], tl[f"{b}.mlp.b_out"] = p[f"{hf}.mlp.fc_out.weight"].T, p[f"{hf}.mlp.fc_out.bias"]
    return tl


def write_weights(tl: TLWeights, cfg: dict) -> dict[str, np.ndarray]:
    d = cfg["d_model"]
    p = {
        "transformer.wte.weight": tl["embed.W_E"],
        "lm_head.weight": tl["unembed.W_U"].T,
        "lm_head.bias": tl["unembed.b_U"],
    }
    if "ln_final.w" in tl:
        p["transformer.ln_f.weight"], p["transformer.ln_f.bias"] = tl["ln_final.w"], tl["ln_final.b"]
    for layer in range(cfg["n_layers"]):
        hf, b = _block(layer), f"blocks.{layer}"
        if f"{b}.ln1.w" in tl:  # ln2 is the same HF norm; fold_ln removes both
            p[f"{hf}.ln_1.weight"], p[f"{hf}.ln_1.bias"] = tl[f"{b}.ln1.w"], tl[f"{b}.ln1.b"]
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            p[f"{hf}.attn.{proj}.weight"] = heads_to_linear(tl[f"{b}.attn.W_{name}"])
            p[f"{hf}.attn.{proj}.bias"] = tl[f"{b}.attn.b_{name}"].reshape(-1)
        p[f"{hf}.attn.out_proj.weight"] = tl[f"{b}.attn.W_O"].reshape(-1, d).T
        p[f"{hf}.attn.out_proj.bias"] = tl[f"{b}.attn.b_O"]
        p[f"{hf}.mlp.fc_in.weight"], p[f"{hf}.mlp.fc_in.bias"] = tl[f"{b}.mlp.W_in"].T, tl[f"{b}.mlp.b_in"]
        p[f"{hf}.mlp.fc_out.weight"], p[f"{hf}.mlp.fc_out.bias"] = tl[f"{b}.mlp.W_out"].T, tl[f"{b}.mlp.b_out"]
    return p


_ATTN = "transformer.h.{layer}.attn"

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
    read_weights=read_weights,
    write_weights=write_weights,
    zero_biases=tuple(f"{_ATTN}.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj")),
)
