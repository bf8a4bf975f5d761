"""Mistral (``MistralForCausalLM``): Llama's layout, every layer attending within ``sliding_window``
(when set); TransformerLens caps n_ctx at 2048."""

from __future__ import annotations

from graphlens.architectures.llama import base_config, llama_like
from graphlens.architectures.windows import local_attention


N_CTX = 2048  # TransformerLens caps Mistral's context


def config_from_hf(hf: dict) -> dict:
    return {**base_config(hf, "MistralForCausalLM"), "n_ctx": N_CTX, "final_rms": False,
            **local_attention(hf.get("sliding_window"), None, hf["num_hidden_layers"])}


MISTRAL = llama_like(
    "mistral",
    "MistralForCausalLM",
    ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),
    "as Llama (RMSNorm, rotary, grouped-query attention, gated SiLU MLP)",
    config_from_hf,
)
