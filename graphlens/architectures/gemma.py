"""Gemma (``GemmaForCausalLM``): Llama's layout; embeddings scaled by sqrt(d_model), RMSNorm by (1 + w).

As TransformerLens, the state dict holds ``W_E * sqrt(d_model)`` and the norms' ``1 + w``; the graph
keeps HF's parameters, so the adapter converts both ways.
"""

from __future__ import annotations

import numpy as np

from graphlens.architectures import llama
from graphlens.architectures.base import Params, TLWeights
from graphlens.architectures.llama import base_config, llama_like

NORM_OFFSET = 1.0


def config_from_hf(hf: dict) -> dict:
    # act_fn is what HF computes: "gelu_pytorch_tanh" (transformers maps Gemma's legacy "gelu" to it);
    # TransformerLens' fixed Gemma configs say exact "gelu"
    return base_config(hf, "GemmaForCausalLM")


def _is_norm_weight(name: str) -> bool:
    return name == "ln_final.w" or name.endswith((".ln1.w", ".ln2.w", ".ln1_post.w", ".ln2_post.w"))


def read_weights(p: Params, cfg: dict, norms: tuple[tuple[str, str], ...] = llama.NORMS) -> TLWeights:
    tl = llama.read_weights(p, cfg, norms)
    tl["embed.W_E"] = tl["embed.W_E"] * np.asarray(cfg["d_model"] ** 0.5, dtype=tl["embed.W_E"].dtype)
    return {k: v + NORM_OFFSET if _is_norm_weight(k) else v for k, v in tl.items()}


def write_weights(tl: TLWeights, cfg: dict, norms: tuple[tuple[str, str], ...] = llama.NORMS) -> dict[str, np.ndarray]:
    hf = {k: v - NORM_OFFSET if _is_norm_weight(k) else v for k, v in tl.items()}
    hf["embed.W_E"] = hf["embed.W_E"] / np.asarray(cfg["d_model"] ** 0.5, dtype=hf["embed.W_E"].dtype)
    return llama.write_weights(hf, cfg, norms)


GEMMA = llama_like(
    "gemma",
    "GemmaForCausalLM",
    ("google/gemma-2b", "google/gemma-7b", "google/gemma-2b-it", "google/gemma-7b-it"),
    "as Llama, with embeddings scaled by sqrt(d_model) and RMSNorm weights offset by one (multi-query in 2b)",
    config_from_hf,
    read=read_weights,
    write=write_weights,
    norm_weight_offset=NORM_OFFSET,
)
