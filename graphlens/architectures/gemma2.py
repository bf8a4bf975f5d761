"""Gemma 2 (``Gemma2ForCausalLM``): Gemma with norms after attention and MLP too, alternating local
(sliding-window) and global attention, and tanh soft-capping of attention scores and of the logits.

TransformerLens names the extra norms ``ln1_post`` (HF ``post_attention_layernorm``) and ``ln2_post``
(``post_feedforward_layernorm``); its ``ln2`` is HF's ``pre_feedforward_layernorm``. fold_ln folds only
the pre-norms; the post-norms keep their weights.
"""

from __future__ import annotations

import dataclasses

from graphlens.architectures import gemma
from graphlens.architectures.base import Mark, Norm
from graphlens.architectures.llama import base_config, llama_like
from graphlens.architectures.windows import local_attention

_LAYER = "model.layers.{layer}"
_NORMS = (("ln1", "input_layernorm"), ("ln1_post", "post_attention_layernorm"),
          ("ln2", "pre_feedforward_layernorm"), ("ln2_post", "post_feedforward_layernorm"))


def _softcap(value) -> float:
    return float(value) if value else -1.0  # TransformerLens: -1 = disabled


def config_from_hf(hf: dict) -> dict:
    n_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    window = hf.get("sliding_window")
    act = hf.get("hidden_activation") or hf.get("hidden_act")  # Gemma 2's config calls it hidden_activation
    return dict(
        base_config({**hf, "hidden_act": act}, "Gemma2ForCausalLM"),
        use_normalization_before_and_after=True,
        attn_scale=float(hf["query_pre_attn_scalar"]) ** 0.5,
        attn_scores_soft_cap=_softcap(hf.get("attn_logit_softcapping")),
        output_logits_soft_cap=_softcap(hf.get("final_logit_softcapping")),
        **local_attention(window, layer_types, n_layers),
    )


def _gemma2_marks(marks: tuple[Mark, ...]) -> tuple[Mark, ...]:
    # attention and MLP outputs are what the post-norms return; the MLP reads pre_feedforward_layernorm
    moved = {
        "hook_attn_out": Mark("hook_attn_out", f"{_LAYER}.post_attention_layernorm"),
        "hook_resid_mid": Mark("hook_resid_mid", f"{_LAYER}.pre_feedforward_layernorm", at="input"),
        "hook_mlp_out": Mark("hook_mlp_out", f"{_LAYER}.post_feedforward_layernorm"),
    }
    return tuple(moved.get(m.site, m) for m in marks)


PARAMS = gemma.gemma_params(_NORMS)

_BASE = llama_like(
    "gemma2",
    "Gemma2ForCausalLM",
    ("google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b", "google/gemma-2-2b-it", "google/gemma-2-9b-it"),
    "as Gemma, with post-attention/post-MLP RMSNorms, alternating sliding-window and global attention, "
    "attention-score and logit soft-capping",
    config_from_hf,
    params=PARAMS,
)
GEMMA2 = dataclasses.replace(
    _BASE,
    marks=_gemma2_marks(_BASE.marks),
    norms=tuple(Norm(tl, f"{_LAYER}.{hf}", gemma.NORM_OFFSET) for tl, hf in _NORMS)
    + (Norm("ln_final", "model.norm", gemma.NORM_OFFSET),),
)
