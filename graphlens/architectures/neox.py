"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): parallel attention and MLP, partial rotary, fused qkv per head."""

from __future__ import annotations

import numpy as np

from graphlens.architectures.base import Architecture, AttentionSites, Mark, Norm, Params, TLWeights, rope_parameters


def config_from_hf(hf: dict) -> dict:
    if not hf.get("use_parallel_residual", True):
        raise ValueError("GPT-NeoX with use_parallel_residual=False is not supported yet (only parallel blocks)")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = d_model // n_heads
    return dict(
        d_model=d_model,
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=n_heads,
        d_mlp=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
        act_fn=hf["hidden_act"],
        eps=hf["layer_norm_eps"],
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=round(rope_parameters(hf)["partial_rotary_factor"] * d_head),
        rotary_base=rope_parameters(hf)["rope_theta"],
        rotary_adjacent_pairs=False,
        parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM",
        default_prepend_bos=False,
    )


def _layer(layer: int) -> str:
    return f"gpt_neox.layers.{layer}"


def read_weights(p: Params, cfg: dict) -> TLWeights:
    d, n, h = cfg["d_model"], cfg["n_heads"], cfg["d_head"]
    dtype = p["gpt_neox.embed_in.weight"].dtype
    tl: TLWeights = {
        "embed.W_E": p["gpt_neox.embed_in.weight"],
        "unembed.W_U": p["lm_head.weight"].T,
        "unembed.b_U": p["lm_head.bias"],
    }
    if "gpt_neox.final_layer_norm.weight" in p:
        tl["ln_final.w"], tl["ln_final.b"] = p["gpt_neox.final_layer_norm.weight"], p["gpt_neox.final_layer_norm.bias"]
    for layer in range(cfg["n_layers"]):
        hf, b = _layer(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            if f"{hf}.{hf_ln}.weight" in p:
                tl[f"{b}.{tl_ln}.w"], tl[f"{b}.{tl_ln}.b"] = p[f"{hf}.{hf_ln}.weight"], p[f"{hf}.{hf_ln}.bias"]
        # rows of the fused projection are ordered (head, q/k/v, d_head)
        w_qkv = p[f"{hf}.attention.query_key_value.weight"].reshape(n, 3, h, d)
        b_qkv = p.get(f"{hf}.attention.query_key_value.bias", np.zeros(3 * d, dtype)).reshape(n, 3, h)
        for i, name in enumerate("QKV"):
            tl[f"{b}.attn.W_{name}"] = w_qkv[:, i].transpose(0, 2, 1)
            tl[f"{b}.attn.b_{name}"] = b_qkv[:, i]
        tl[f"{b}.attn.W_O"] = p[f"{hf}.attention.dense.weight"].T.reshape(n, h, d)
        tl[f"{b}.attn.b_O"] = p.get(f"{hf}.attention.dense.bias", np.zeros(d, dtype))
        tl[f"{b}.mlp.W_in"], tl[f"{b}.mlp.b_in"] = p[f"{hf}.mlp.dense_h_to_4h.weight"].T, p[f"{hf}.mlp.dense_h_to_4h.bias"]
        tl[f"{b}.mlp.W_out"], tl[f"{b}.mlp.b_out"] = p[f"{hf}.mlp.dense_4h_to_h.weight"].T, p[f"{hf}.mlp.dense_4h_to_h.bias"]
    return tl


def write_weights(tl: TLWeights, cfg: dict) -> dict[str, np.ndarray]:
    d = cfg["d_model"]
    p = {
        "gpt_neox.embed_in.weight": tl["embed.W_E"],
        "lm_head.weight": tl["unembed.W_U"].T,
        "lm_head.bias": tl["unembed.b_U"],
    }
    if "ln_final.w" in tl:
        p["gpt_neox.final_layer_norm.weight"], p["gpt_neox.final_layer_norm.bias"] = tl["ln_final.w"], tl["ln_final.b"]
    for layer in range(cfg["n_layers"]):
        hf, b = _layer(layer), f"blocks.{layer}"
        for tl_ln, hf_ln in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            if f"{b}.{tl_ln}.w" in tl:
                p[f"{hf}.{hf_ln}.weight"], p[f"{hf}.{hf_ln}.bias"] = tl[f"{b}.{tl_ln}.w"], tl[f"{b}.{tl_ln}.b"]
        w = np.stack([tl[f"{b}.attn.W_{n}"].transpose(0, 2, 1) for n in "QKV"], axis=1)  # [n, 3, h, d]
        p[f"{hf}.attention.query_key_value.weight"] = w.reshape(-1, d)
        p[f"{hf}.attention.query_key_value.bias"] = np.stack([tl[f"{b}.attn.b_{n}"] for n in "QKV"], axis=1).reshape(-1)
        p[f"{hf}.attention.dense.weight"] = tl[f"{b}.attn.W_O"].reshape(-1, d).T
        p[f"{hf}.attention.dense.bias"] = tl[f"{b}.attn.b_O"]
        p[f"{hf}.mlp.dense_h_to_4h.weight"], p[f"{hf}.mlp.dense_h_to_4h.bias"] = tl[f"{b}.mlp.W_in"].T, tl[f"{b}.mlp.b_in"]
        p[f"{hf}.mlp.dense_4h_to_h.weight"], p[f"{hf}.mlp.dense_4h_to_h.bias"] = tl[f"{b}.mlp.W_out"].T, tl[f"{b}.mlp.b_out"]
    return p


_QKV = "gpt_neox.layers.{layer}.attention.query_key_value"

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
    read_weights=read_weights,
    write_weights=write_weights,
    zero_biases=(_QKV, "gpt_neox.layers.{layer}.attention.dense"),
)
