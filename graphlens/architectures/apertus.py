"""Apertus (``ApertusForCausalLM``, swiss-ai/Apertus-*): Llama's attention with Qwen3's per-head q/k RMS
norms, a non-gated MLP (up → xIELU → down) and norms named ``attention_layernorm`` /
``feedforward_layernorm``.

xIELU has two trained parameters per layer, TransformerLens' ``mlp.act_fn.alpha_p`` / ``alpha_n`` (HF's
raw values, before their softplus); the graph runs HF's activation on them.
"""

from __future__ import annotations

import dataclasses

from graphlens.architectures.base import Mark, Norm
from graphlens.architectures.llama import _ATTN, _LAYER, _MLP, _llama3_rope, base_config, llama_like
from graphlens.architectures.params import Param, ParamTable, linear_mlp_rows, norm_rows, separate_qkv_rows, unembed_rows
from graphlens.architectures.qwen3 import QK_NORM_ROWS, QK_NORMS

_NORMS = (("ln1", "attention_layernorm"), ("ln2", "feedforward_layernorm"))


def config_from_hf(hf: dict) -> dict:
    # TransformerLens: d_head = d_model / n_heads
    return {**base_config(hf, "ApertusForCausalLM"), **_llama3_rope(hf), "gated_mlp": False, "use_qk_norm": True}


PARAMS = ParamTable((
    Param("model.embed_tokens.weight", "embed.W_E"),
    *(row for tl, hf in _NORMS for row in norm_rows(f"{_LAYER}.{hf}", f"blocks.{{layer}}.{tl}", False)),
    *separate_qkv_rows(_ATTN, "q_proj", "k_proj", "v_proj", "o_proj", kv_heads="n_key_value_heads"),
    *QK_NORM_ROWS,
    *linear_mlp_rows(f"{_MLP}.up_proj", f"{_MLP}.down_proj", biases="zeros"),
    *(Param(f"{_MLP}.act_fn.{p}", f"blocks.{{layer}}.mlp.act_fn.{p}") for p in ("alpha_p", "alpha_n")),
    *norm_rows("model.norm", "ln_final", False),
    *unembed_rows(),
))

_BASE = llama_like(
    "apertus",
    "ApertusForCausalLM",
    ("swiss-ai/Apertus-8B-2509", "swiss-ai/Apertus-8B-Instruct-2509", "swiss-ai/Apertus-70B-2509"),
    "Llama's attention with per-head q/k RMS norms, non-gated xIELU MLP",
    config_from_hf,
    params=PARAMS,
)
_MOVED = {
    "hook_resid_mid": Mark("hook_resid_mid", f"{_LAYER}.feedforward_layernorm", at="input"),
    "mlp.hook_pre": Mark("mlp.hook_pre", f"{_MLP}.up_proj"),
}
APERTUS = dataclasses.replace(
    _BASE,
    marks=tuple(_MOVED.get(m.site, m) for m in _BASE.marks if m.site != "mlp.hook_pre_linear"),
    norms=tuple(Norm(tl, f"{_LAYER}.{hf}") for tl, hf in _NORMS) + (Norm("ln_final", "model.norm"),)
    + tuple(dataclasses.replace(n, heads_first=True) for n in QK_NORMS),  # HF normalises [batch, heads, pos, d_head]
)
