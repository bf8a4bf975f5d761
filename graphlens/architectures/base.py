"""What an architecture adapter declares: where its hook sites are and how its weights map to TransformerLens'.

An adapter is data plus two weight-layout functions. It imports no torch: the runtime uses the same
adapter to read TransformerLens-shaped weights (``W_Q`` …) straight from ONNX initializers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import numpy as np

from graphlens.sites import KINDS

Params = Mapping[str, np.ndarray]  # HF parameter name → array (as stored in the ONNX initializers)
TLWeights = dict[str, np.ndarray]  # TransformerLens state-dict name → array


@dataclass(frozen=True)
class Mark:
    """One hook site on an HF module: its output (or its first input) is the site's tensor."""

    site: str  # TransformerLens suffix, e.g. "hook_resid_pre", "mlp.hook_pre", "hook_embed"
    module: str  # module path; "{layer}" is filled in for per-layer sites
    at: Literal["input", "output"] = "output"
    heads: str | None = None  # config field ("n_heads"): the site is the output viewed as [..., heads, d_head]


@dataclass(frozen=True)
class Norm:
    """A LayerNorm/RMSNorm module replaced by one that exposes hook_scale and hook_normalized."""

    prefix: str  # "ln1", "ln2", "ln_final"
    module: str


@dataclass(frozen=True)
class AttentionSites:
    """The attention module; its core (scores, pattern, z) runs in graphlens' attention function."""

    module: str
    query_site: str = "attn.hook_q"  # the query as the attention function receives it ("attn.hook_rot_q" if rotary)
    key_site: str = "attn.hook_k"


@dataclass(frozen=True)
class Architecture:
    name: str
    hf_architectures: tuple[str, ...]
    hub_examples: tuple[str, ...]
    marks: tuple[Mark, ...]
    norms: tuple[Norm, ...]
    attention: AttentionSites
    config_from_hf: Callable[[dict], dict]
    read_weights: Callable[[Params, dict], TLWeights]  # HF params → TL state dict
    write_weights: Callable[[TLWeights, dict], dict[str, np.ndarray]]  # TL state dict → HF params
    description: str = ""
    extra: dict = field(default_factory=dict)

    def site_suffixes(self) -> list[str]:
        """Every hook suffix this architecture has, in TransformerLens' forward order."""
        present = {m.site for m in self.marks}
        present |= {f"{n.prefix}.hook_scale" for n in self.norms} | {f"{n.prefix}.hook_normalized" for n in self.norms}
        present |= {self.attention.query_site, self.attention.key_site, "attn.hook_v"}
        present |= {"attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z"}
        return [suffix for suffix in KINDS if suffix in present]

    def hook_names(self, n_layers: int) -> list[str]:
        names: list[str] = []
        suffixes = self.site_suffixes()
        model_level = [s for s in suffixes if not KINDS[s].per_layer]
        block = [s for s in suffixes if KINDS[s].per_layer]
        names += [s for s in model_level if s in ("hook_embed", "hook_pos_embed")]
        for layer in range(n_layers):
            names += [KINDS[s].name(layer) for s in block]
        names += [s for s in model_level if s not in ("hook_embed", "hook_pos_embed")]
        return names


def split_heads(w: np.ndarray, n_heads: int) -> np.ndarray:
    """[d_model, n_heads*d_head] → [n_heads, d_model, d_head]."""
    d_model = w.shape[0]
    return w.reshape(d_model, n_heads, -1).transpose(1, 0, 2)


def merge_heads(w: np.ndarray) -> np.ndarray:
    """[n_heads, d_model, d_head] → [d_model, n_heads*d_head]."""
    n_heads, d_model, d_head = w.shape
    return w.transpose(1, 0, 2).reshape(d_model, n_heads * d_head)
