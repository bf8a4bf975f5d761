"""Qwen2 / Qwen1.5 (``Qwen2ForCausalLM``): Llama's layout with q/k/v biases.

fold_value_biases moves b_V into b_O, so ``o_proj`` gets a (zero) bias at export.

``use_sliding_window=True``: layers from ``max_window_layers`` on attend within ``sliding_window``, as
HF computes them (TransformerLens 3.9 ignores the setting and attends globally everywhere).
"""

from __future__ import annotations

from graphlens.architectures.llama import base_config, llama_like
from graphlens.architectures.windows import local_attention


def config_from_hf(hf: dict) -> dict:
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    n_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i >= hf.get("max_window_layers", n_layers) else "full_attention" for i in range(n_layers)]
    return {**base_config(hf, "Qwen2ForCausalLM"), "default_prepend_bos": False, "tokenizer_prepends_bos": True,
            **local_attention(window, layer_types, n_layers)}


QWEN2 = llama_like(
    "qwen2",
    "Qwen2ForCausalLM",
    ("Qwen/Qwen2-0.5B", "Qwen/Qwen2-1.5B", "Qwen/Qwen2-7B", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B",
     "Qwen/Qwen1.5-0.5B", "Qwen/Qwen1.5-1.8B"),
    "as Llama, with q/k/v biases",
    config_from_hf,
    zero_biases=("model.layers.{layer}.self_attn.o_proj",),
)
