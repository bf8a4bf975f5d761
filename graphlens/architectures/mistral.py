"""Mistral (``MistralForCausalLM``): Llama's layout; TransformerLens caps n_ctx at 2048 (shorter than
Mistral's 4096-token sliding window, so attention is plain causal attention within it)."""

from __future__ import annotations

from graphlens.errors import UnsupportedArchitectureError

from graphlens.architectures.llama import base_config, llama_like


N_CTX = 2048  # TransformerLens caps Mistral's context


def config_from_hf(hf: dict) -> dict:
    window = hf.get("sliding_window")
    if window and window < N_CTX:
        raise UnsupportedArchitectureError(
            f"Mistral with a sliding window ({window}) shorter than its context ({N_CTX}) is not supported yet"
        )
    return {**base_config(hf, "MistralForCausalLM"), "n_ctx": N_CTX, "final_rms": False}


MISTRAL = llama_like(
    "mistral",
    "MistralForCausalLM",
    ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1"),
    "as Llama (RMSNorm, rotary, grouped-query attention, gated SiLU MLP)",
    config_from_hf,
)
