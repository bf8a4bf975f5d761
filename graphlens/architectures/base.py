"""What an architecture adapter declares: where its hook sites are and how its weights map to TransformerLens'.

An adapter is data: its sites, its config mapping, and its parameter table (``params.ParamTable``, whose
``read``/``write`` are the adapter's ``read_weights``/``write_weights``). It imports no torch: the runtime
uses the same adapter to read TransformerLens-shaped weights (``W_Q`` …) straight from ONNX initializers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import numpy as np

from graphlens.sites import KINDS, ordered_hook_names

Params = Mapping[str, np.ndarray]  # HF parameter name → array (as stored in the ONNX initializers)
# TransformerLens state-dict name → array. Grouped-query attention: attn.W_K/W_V/b_K/b_V keep their
# n_key_value_heads heads (TL's _W_K …). Biases HF lacks are zeros; write_weights may return them and the
# weight rewrite drops those that stay zero and are not in the graph.
TLWeights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Mark:
    """One hook site on an HF module: its output (or its first input) is the site's tensor."""

    site: str  # TransformerLens suffix, e.g. "hook_resid_pre", "mlp.hook_pre", "hook_embed"
    module: str  # module path; "{layer}" is filled in for per-layer sites
    at: Literal["input", "output"] = "output"
    heads: str | None = None  # config field ("n_heads"): the site is the output viewed as [..., heads, d_head]
    # fused projections: the output viewed as [..., heads, count, d_head]; the site is slice ``index`` of ``count``
    part: tuple[int, int] | None = None
    # fused projections laid out block after block (Phi-3's qkv_proj, gate_up_proj): the site is the
    # output's last-axis slice [start, stop), ``span(cfg)`` (then viewed per head when ``heads`` is set)
    span: Callable[[dict], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Norm:
    """A LayerNorm/RMSNorm module replaced by one that exposes hook_scale and hook_normalized."""

    prefix: str  # "ln1", "ln2", "ln_final"
    module: str
    weight_offset: float = 0.0  # Gemma's RMSNorm scales by (offset + weight)
    # TL has two norms where HF has one (GPT-J's ln_1 feeds attention and MLP): this site is a second
    # application of ``module`` to the same input, and its result goes to ``feeds`` (the MLP) instead
    feeds: str | None = None
    # the module sees [batch, heads, pos, d_head] (Apertus' q/k norms): its sites are [batch, pos, heads, …]
    heads_first: bool = False


@dataclass(frozen=True)
class AttentionSites:
    """The attention module; its core (scores, pattern, z) runs in graphlens' attention function."""

    module: str
    # the query/key as the attention function receives them ("attn.hook_rot_q" if rotary); None when a Mark
    # names them elsewhere (e.g. OPT scales the query after its projection)
    query_site: str | None = "attn.hook_q"
    key_site: str | None = "attn.hook_k"
    # a module that computes attention itself (not through transformers' attention interface): (its method,
    # the graphlens replacement that computes it through graphlens' attention function), see
    # ``graphlens.export.own_attention``
    replace: tuple[str, str] | None = None


@dataclass(frozen=True)
class Architecture:
    name: str
    hf_architectures: tuple[str, ...]
    hub_examples: tuple[str, ...]
    marks: tuple[Mark, ...]
    norms: tuple[Norm, ...]
    attention: AttentionSites
    config_from_hf: Callable[[dict], dict]
    # (params, cfg, part=None): HF params → TL state dict, of one ``params.Part`` when given
    read_weights: Callable[..., TLWeights]
    # (tl, cfg, part=None): TL state dict → HF params
    write_weights: Callable[..., dict[str, np.ndarray]]
    description: str = ""
    # Linear modules without a bias in HF whose TL bias processing can make non-zero (fold_value_biases' b_O,
    # fold_ln's b_Q…): the export gives them a zero bias, so processed weights have somewhere to go
    zero_biases: tuple[str, ...] = ()
    # a module ("{layer}") whose input is [batch, pos, d_model] while modules inside it see flattened
    # tokens [batch*pos, …] (OPT's MLP): their sites are viewed back as [batch, pos, …]
    flat_tokens_in: str | None = None
    extra: dict = field(default_factory=dict)
    # variants of one HF class with different sites (sequential GPT-NeoX has hook_resid_mid): the first
    # registered adapter whose ``accepts(hf_config)`` holds is used; None accepts every config
    accepts: Callable[[dict], bool] | None = None

    def site_suffixes(self) -> list[str]:
        """Every hook suffix this architecture has, in TransformerLens' forward order."""
        present = {m.site for m in self.marks}
        present |= {f"{n.prefix}.hook_scale" for n in self.norms} | {f"{n.prefix}.hook_normalized" for n in self.norms}
        present |= {self.attention.query_site, self.attention.key_site, "attn.hook_v"} - {None}
        present |= {"attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z"}
        return [suffix for suffix in KINDS if suffix in present]

    def hook_names(self, n_layers: int) -> list[str]:
        suffixes = self.site_suffixes()
        return ordered_hook_names([s for s in suffixes if KINDS[s].per_layer],
                                  [s for s in suffixes if not KINDS[s].per_layer], n_layers)


def split_heads(w: np.ndarray, n_heads: int) -> np.ndarray:
    """[d_model, n_heads*d_head] → [n_heads, d_model, d_head]."""
    d_model = w.shape[0]
    return w.reshape(d_model, n_heads, -1).transpose(1, 0, 2)


def merge_heads(w: np.ndarray) -> np.ndarray:
    """[n_heads, d_model, d_head] → [d_model, n_heads*d_head]."""
    n_heads, d_model, d_head = w.shape
    return w.transpose(1, 0, 2).reshape(d_model, n_heads * d_head)


def heads_from_linear(w: np.ndarray, n_heads: int) -> np.ndarray:
    """nn.Linear weight ``[n_heads*d_head, d_model]`` → TL's ``[n_heads, d_model, d_head]``."""
    return w.reshape(n_heads, -1, w.shape[-1]).transpose(0, 2, 1)


def heads_to_linear(w: np.ndarray) -> np.ndarray:
    """TL's ``[n_heads, d_model, d_head]`` → nn.Linear weight ``[n_heads*d_head, d_model]``."""
    return w.transpose(0, 2, 1).reshape(-1, w.shape[1])


def standard_dims(hf: dict, d_mlp_key: str = "intermediate_size") -> dict:
    """The model dimensions of an HF config with the common key names (hidden_size, num_attention_heads, ...)."""
    n_heads = hf["num_attention_heads"]
    return dict(
        d_model=hf["hidden_size"],
        d_head=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf[d_mlp_key],
        n_layers=hf["num_hidden_layers"],
        n_ctx=hf["max_position_embeddings"],
        d_vocab=hf["vocab_size"],
        d_vocab_out=hf["vocab_size"],
    )


def rope_parameters(hf: dict) -> dict:
    """transformers 5 keeps rotary settings in ``rope_parameters`` (older configs: top-level fields).

    Only the config reads them: the graph computes rotary embeddings with HF's own module, so scaled
    variants (Llama 3's "llama3" …) run as HF runs them.
    """
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope.setdefault("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000)))
    rope.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    return rope
