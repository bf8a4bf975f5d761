"""OPT (``OPTForCausalLM``, pre-norm sizes): LayerNorm, learned positions (offset by 2), ReLU MLP.

HF scales the query right after its projection, so ``hook_q`` is the projection's output (unscaled, as
TransformerLens'); the MLP runs on flattened tokens, whose sites are viewed back as [batch, pos, …].
"""

from __future__ import annotations

import numpy as np

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm, Params, TLWeights
from graphlens.architectures.base import heads_from_linear, heads_to_linear

POSITION_OFFSET = 2  # OPT's position embedding table starts with two unused rows


def config_from_hf(hf: dict) -> dict:
    if not hf.get("do_layer_norm_before", True):
        raise ValueError("OPT with do_layer_norm_before=False (opt-350m) is not supported: TransformerLens has no post-norm OPT")
    if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
        raise ValueError("OPT with word_embed_proj_dim != hidden_size (project_in/out) is not supported")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return dict(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_key_value_heads=n_heads,
        d_mlp=hf["ffn_dim"],
        n_layers=hf["num_hidden_layers"],
        n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
        act_fn=hf["activation_function"],
        eps=1e-5,  # HF's nn.LayerNorm default, which TransformerLens states
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="OPTForCausalLM",
    )


def _layer(layer: int) -> str:
    return f"model.decoder.layers.{layer}"


_NORMS = (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm"))


def read_weights(p: Params, cfg: dict) -> TLWeights:
    n, h, d = cfg["n_heads"], cfg["d_head"], cfg["d_model"]
    positions = p["model.decoder.embed_positions.weight"]
    tl: TLWeights = {
        "embed.W_E": p["model.decoder.embed_tokens.weight"],
        "pos_embed.W_pos": positions[POSITION_OFFSET:],
        "pos_embed._offset_rows": positions[:POSITION_OFFSET],  # not TL's: kept so writing restores the table
        "unembed.W_U": p["lm_head.weight"].T,
        "unembed.b_U": p["lm_head.bias"],
    }
    if "model.decoder.final_layer_norm.weight" in p:
        tl["ln_final.w"] = p["model.decoder.final_layer_norm.weight"]
        tl["ln_final.b"] = p["model.decoder.final_layer_norm.bias"]
    for layer in range(cfg["n_layers"]):
        hf, b = _layer(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in _NORMS:
            if f"{hf}.{hf_ln}.weight" in p:
                tl[f"{b}.{tl_ln}.w"], tl[f"{b}.{tl_ln}.b"] = p[f"{hf}.{hf_ln}.weight"], p[f"{hf}.{hf_ln}.bias"]
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            tl[f"{b}.attn.W_{name}"] = heads_from_linear(p[f"{hf}.self_attn.{proj}.weight"], n)
            tl[f"{b}.attn.b_{name}"] = p[f"{hf}.self_attn.{proj}.bias"].reshape(n, h)
        tl[f"{b}.attn.W_O"] = p[f"{hf}.self_attn.out_proj.weight"].T.reshape(n, h, d)
        tl[f"{b}.attn.b_O"] = p[f"{hf}.self_attn.out_proj.bias"]
        tl[f"{b}.mlp.W_in"], tl[f"{b}.mlp.b_in"] = p[f"{hf}.fc1.weight"].T, p[f"{hf}.fc1.bias"]
        tl[f"{b}.mlp.W_out"], tl[f"{b}.mlp.b_out"] = p[f"{hf}.fc2.weight"].T, p[f"{hf}.fc2.bias"]
    return tl


def write_weights(tl: TLWeights, cfg: dict) -> dict[str, np.ndarray]:
    d = cfg["d_model"]
    p = {
        "model.decoder.embed_tokens.weight": tl["embed.W_E"],
        "model.decoder.embed_positions.weight": np.concatenate([tl["pos_embed._offset_rows"], tl["pos_embed.W_pos"]]),
        "lm_head.weight": tl["unembed.W_U"].T,
        "lm_head.bias": tl["unembed.b_U"],
    }
    if "ln_final.w" in tl:
        p["model.decoder.final_layer_norm.weight"] = tl["ln_final.w"]
        p["model.decoder.final_layer_norm.bias"] = tl["ln_final.b"]
    for layer in range(cfg["n_layers"]):
        hf, b = _layer(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in _NORMS:
            if f"{b}.{tl_ln}.w" in tl:
                p[f"{hf}.{hf_ln}.weight"], p[f"{hf}.{hf_ln}.bias"] = tl[f"{b}.{tl_ln}.w"], tl[f"{b}.{tl_ln}.b"]
        for name, proj in (("Q", "q_proj"), ("K", "k_proj"), ("V", "v_proj")):
            p[f"{hf}.self_attn.{proj}.weight"] = heads_to_linear(tl[f"{b}.attn.W_{name}"])
            p[f"{hf}.self_attn.{proj}.bias"] = tl[f"{b}.attn.b_{name}"].reshape(-1)
        p[f"{hf}.self_attn.out_proj.weight"] = tl[f"{b}.attn.W_O"].reshape(-1, d).T
        p[f"{hf}.self_attn.out_proj.bias"] = tl[f"{b}.attn.b_O"]
        p[f"{hf}.fc1.weight"], p[f"{hf}.fc1.bias"] = tl[f"{b}.mlp.W_in"].T, tl[f"{b}.mlp.b_in"]
        p[f"{hf}.fc2.weight"], p[f"{hf}.fc2.bias"] = tl[f"{b}.mlp.W_out"].T, tl[f"{b}.mlp.b_out"]
    return p


_L = "model.decoder.layers.{layer}"

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
    read_weights=read_weights,
    write_weights=write_weights,
    flat_tokens_in=_L,
)
