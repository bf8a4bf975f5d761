"""Phi-3 (``Phi3ForCausalLM``): Llama's block with q/k/v fused in one ``qkv_proj`` (all queries, then keys,
then values) and gate/up fused in ``gate_up_proj`` (gate first); every layer may attend within
``sliding_window``.

The fused outputs' slices are the sites (``Mark.span``): hook_q/hook_k in ``qkv_proj``, mlp.hook_pre
(gate) and mlp.hook_pre_linear (up) in ``gate_up_proj``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from graphlens.architectures.base import Mark, heads_from_linear, heads_to_linear
from graphlens.architectures.llama import NORMS, _ATTN, _MLP, base_config, llama_like
from graphlens.architectures.params import (LINEAR_OUT, QKV, QKV_BIASES, TRANSPOSED, Layout, Param, ParamTable, norm_rows,
                                            unembed_rows)
from graphlens.architectures.windows import local_attention

_LAYER = "model.layers.{layer}"


def config_from_hf(hf: dict) -> dict:
    n_layers = hf["num_hidden_layers"]
    # TransformerLens: d_head = d_model / n_heads, full rotary, final norm not marked final_rms
    return {**base_config(hf, "Phi3ForCausalLM"), "final_rms": False,
            **local_attention(hf.get("sliding_window"), None, n_layers)}


def _qkv_sizes(cfg: dict) -> list[int]:
    q, kv = cfg["n_heads"] * cfg["d_head"], cfg["n_key_value_heads"] * cfg["d_head"]
    return [q, kv, kv]


def _split_qkv(a: np.ndarray, cfg: dict) -> tuple[np.ndarray, ...]:
    q, k, v = np.split(a, np.cumsum(_qkv_sizes(cfg))[:2], axis=0)
    return (heads_from_linear(q, cfg["n_heads"]), heads_from_linear(k, cfg["n_key_value_heads"]),
            heads_from_linear(v, cfg["n_key_value_heads"]))


def _split_qkv_bias(a: np.ndarray, cfg: dict) -> tuple[np.ndarray, ...]:
    q, k, v = np.split(a, np.cumsum(_qkv_sizes(cfg))[:2])
    return q.reshape(cfg["n_heads"], -1), k.reshape(cfg["n_key_value_heads"], -1), v.reshape(cfg["n_key_value_heads"], -1)


QKV_BLOCKS = Layout(_split_qkv, lambda t, cfg: np.concatenate([heads_to_linear(w) for w in t], axis=0))
QKV_BLOCKS_BIAS = Layout(_split_qkv_bias, lambda t, cfg: np.concatenate([b.reshape(-1) for b in t]))
# gate_up_proj [2*d_mlp, d_model] ↔ TL's W_gate, W_in (each [d_model, d_mlp])
GATE_UP = Layout(lambda a, cfg: tuple(w.T for w in np.split(a, 2, axis=0)),
                 lambda t, cfg: np.concatenate([w.T for w in t], axis=0))

PARAMS = ParamTable((
    Param("model.embed_tokens.weight", "embed.W_E"),
    *(row for tl, hf in NORMS for row in norm_rows(f"{_LAYER}.{hf}", f"blocks.{{layer}}.{tl}", False)),
    Param(f"{_ATTN}.qkv_proj.weight", QKV, QKV_BLOCKS),
    Param(f"{_ATTN}.qkv_proj.bias", QKV_BIASES, QKV_BLOCKS_BIAS, missing="zeros"),
    Param(f"{_ATTN}.o_proj.weight", "blocks.{layer}.attn.W_O", LINEAR_OUT),
    Param(f"{_ATTN}.o_proj.bias", "blocks.{layer}.attn.b_O", missing="zeros"),
    Param(f"{_MLP}.gate_up_proj.weight", ("blocks.{layer}.mlp.W_gate", "blocks.{layer}.mlp.W_in"), GATE_UP),
    Param(f"{_MLP}.down_proj.weight", "blocks.{layer}.mlp.W_out", TRANSPOSED),
    Param(f"{_MLP}.down_proj.bias", "blocks.{layer}.mlp.b_out", missing="zeros"),
    *norm_rows("model.norm", "ln_final", False),
    *unembed_rows(),
))


def _marks(marks: tuple[Mark, ...]) -> tuple[Mark, ...]:
    qkv, gate_up = f"{_ATTN}.qkv_proj", f"{_MLP}.gate_up_proj"
    moved = {
        "attn.hook_q": Mark("attn.hook_q", qkv, heads="n_heads", span=lambda cfg: (0, _qkv_sizes(cfg)[0])),
        "attn.hook_k": Mark("attn.hook_k", qkv, heads="n_key_value_heads",
                            span=lambda cfg: (_qkv_sizes(cfg)[0], sum(_qkv_sizes(cfg)[:2]))),
        "mlp.hook_pre": Mark("mlp.hook_pre", gate_up, span=lambda cfg: (0, cfg["d_mlp"])),
        "mlp.hook_pre_linear": Mark("mlp.hook_pre_linear", gate_up, span=lambda cfg: (cfg["d_mlp"], 2 * cfg["d_mlp"])),
    }
    return tuple(moved.get(m.site, m) for m in marks)


_BASE = llama_like(
    "phi3",
    "Phi3ForCausalLM",
    ("microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3-mini-128k-instruct", "microsoft/Phi-3.5-mini-instruct"),
    "as Llama, with fused qkv_proj and gate_up_proj, sliding-window attention",
    config_from_hf,
    params=PARAMS,
)
PHI3 = dataclasses.replace(_BASE, marks=_marks(_BASE.marks))
