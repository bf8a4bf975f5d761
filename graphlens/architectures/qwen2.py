"""Qwen2 / Qwen1.5 (``Qwen2ForCausalLM``): Llama's layout with q/k/v biases.

fold_value_biases moves b_V into b_O, so ``o_proj`` gets a (zero) bias at export.
"""

from __future__ import annotations

from graphlens.errors import UnsupportedArchitectureError

from graphlens.architectures.llama import base_config, llama_like


def config_from_hf(hf: dict) -> dict:
    if hf.get("use_sliding_window"):
        raise UnsupportedArchitectureError("Qwen2 with use_sliding_window=True is not supported yet")
    return {**base_config(hf, "Qwen2ForCausalLM"), "default_prepend_bos": False, "tokenizer_prepends_bos": True}


QWEN2 = llama_like(
    "qwen2",
    "Qwen2ForCausalLM",
    ("Qwen/Qwen2-0.5B", "Qwen/Qwen2-1.5B", "Qwen/Qwen2-7B", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B",
     "Qwen/Qwen1.5-0.5B", "Qwen/Qwen1.5-1.8B"),
    "as Llama, with q/k/v biases",
    config_from_hf,
    zero_biases=("model.layers.{layer}.self_attn.o_proj",),
)
