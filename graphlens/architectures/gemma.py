"""Gemma (``GemmaForCausalLM``): Llama's layout; embeddings scaled by sqrt(d_model), RMSNorm by (1 + w).

As TransformerLens, the state dict holds ``W_E * sqrt(d_model)`` and the norms' ``1 + w``; the graph
keeps HF's parameters, so the adapter converts both ways.
"""

from __future__ import annotations

from graphlens.architectures import llama
from graphlens.architectures.llama import base_config, llama_like
from graphlens.architectures.params import ParamTable, offset, scaled

NORM_OFFSET = 1.0


def config_from_hf(hf: dict) -> dict:
    # act_fn is what HF computes: "gelu_pytorch_tanh" (transformers maps Gemma's legacy "gelu" to it);
    # TransformerLens' fixed Gemma configs say exact "gelu"
    return base_config(hf, "GemmaForCausalLM")


def gemma_params(norms: tuple[tuple[str, str], ...] = llama.NORMS) -> ParamTable:
    return llama.llama_params(norms, norm_layout=offset(NORM_OFFSET), embed_layout=scaled(lambda cfg: cfg["d_model"] ** 0.5))


GEMMA = llama_like(
    "gemma",
    "GemmaForCausalLM",
    ("google/gemma-2b", "google/gemma-7b", "google/gemma-2b-it", "google/gemma-7b-it"),
    "as Llama, with embeddings scaled by sqrt(d_model) and RMSNorm weights offset by one (multi-query in 2b)",
    config_from_hf,
    params=gemma_params(),
    norm_weight_offset=NORM_OFFSET,
)
