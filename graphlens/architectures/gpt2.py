"""GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, fused qkv Conv1D, GELU MLP."""

from __future__ import annotations

import numpy as np

from graphlens.architectures.base import (
    Architecture,
    AttentionSites,
    Mark,
    Norm,
    Params,
    TLWeights,
    merge_heads,
    split_heads,
)

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


def _block(layer: int) -> str:
    return f"transformer.h.{layer}"


def read_weights(p: Params, cfg: dict) -> TLWeights:
    d, n_heads = cfg["d_model"], cfg["n_heads"]
    tl: TLWeights = {
        "embed.W_E": p["transformer.wte.weight"],
        "pos_embed.W_pos": p["transformer.wpe.weight"],
        "unembed.W_U": p["lm_head.weight"].T,
        "unembed.b_U": p["lm_head.bias"],
    }
    if "transformer.ln_f.weight" in p:
        tl["ln_final.w"], tl["ln_final.b"] = p["transformer.ln_f.weight"], p["transformer.ln_f.bias"]
    for layer in range(cfg["n_layers"]):
        hf, b = _block(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
            if f"{hf}.{hf_ln}.weight" in p:
                tl[f"{b}.{tl_ln}.w"], tl[f"{b}.{tl_ln}.b"] = p[f"{hf}.{hf_ln}.weight"], p[f"{hf}.{hf_ln}.bias"]
        w_qkv, b_qkv = p[f"{hf}.attn.c_attn.weight"], p[f"{hf}.attn.c_attn.bias"]
        for i, name in enumerate("QKV"):
            tl[f"{b}.attn.W_{name}"] = split_heads(w_qkv[:, i * d : (i + 1) * d], n_heads)
            tl[f"{b}.attn.b_{name}"] = b_qkv[i * d : (i + 1) * d].reshape(n_heads, -1)
        tl[f"{b}.attn.W_O"] = p[f"{hf}.attn.c_proj.weight"].reshape(n_heads, -1, d)
        tl[f"{b}.attn.b_O"] = p[f"{hf}.attn.c_proj.bias"]
        tl[f"{b}.mlp.W_in"], tl[f"{b}.mlp.b_in"] = p[f"{hf}.mlp.c_fc.weight"], p[f"{hf}.mlp.c_fc.bias"]
        tl[f"{b}.mlp.W_out"], tl[f"{b}.mlp.b_out"] = p[f"{hf}.mlp.c_proj.weight"], p[f"{hf}.mlp.c_proj.bias"]
    return tl


def write_weights(tl: TLWeights, cfg: dict) -> dict[str, np.ndarray]:
    d = cfg["d_model"]
    p = {
        "transformer.wte.weight": tl["embed.W_E"],
        "transformer.wpe.weight": tl["pos_embed.W_pos"],
        "lm_head.weight": tl["unembed.W_U"].T,
        "lm_head.bias": tl["unembed.b_U"],
    }
    if "ln_final.w" in tl:
        p["transformer.ln_f.weight"], p["transformer.ln_f.bias"] = tl["ln_final.w"], tl["ln_final.b"]
    for layer in range(cfg["n_layers"]):
        hf, b = _block(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in (("ln1", "ln_1"), ("ln2", "ln_2")):
            if f"{b}.{tl_ln}.w" in tl:
                p[f"{hf}.{hf_ln}.weight"], p[f"{hf}.{hf_ln}.bias"] = tl[f"{b}.{tl_ln}.w"], tl[f"{b}.{tl_ln}.b"]
        p[f"{hf}.attn.c_attn.weight"] = np.concatenate([merge_heads(tl[f"{b}.attn.W_{n}"]) for n in "QKV"], axis=1)
        p[f"{hf}.attn.c_attn.bias"] = np.concatenate([tl[f"{b}.attn.b_{n}"].reshape(-1) for n in "QKV"])
        p[f"{hf}.attn.c_proj.weight"] = tl[f"{b}.attn.W_O"].reshape(-1, d)
        p[f"{hf}.attn.c_proj.bias"] = tl[f"{b}.attn.b_O"]
        p[f"{hf}.mlp.c_fc.weight"], p[f"{hf}.mlp.c_fc.bias"] = tl[f"{b}.mlp.W_in"], tl[f"{b}.mlp.b_in"]
        p[f"{hf}.mlp.c_proj.weight"], p[f"{hf}.mlp.c_proj.bias"] = tl[f"{b}.mlp.W_out"], tl[f"{b}.mlp.b_out"]
    return p


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
    read_weights=read_weights,
    write_weights=write_weights,
)
