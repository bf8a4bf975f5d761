"""The site table: every TransformerLens hook point graphlens knows, with its shape.

One table drives everything: the export marks these sites, the rewrite turns each mark into a graph
output plus substitution inputs, the manifest lists them, and the runtime resolves names against them.
A site's shape is written with symbolic dimension names; the numeric ones come from the model config.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from graphlens.errors import InputError, UnknownHookError

# Symbolic dims stay symbolic in the graph; the others are read from the config.
SYMBOLIC_DIMS = ("batch", "pos", "query_pos", "key_pos")


@dataclass(frozen=True)
class SiteKind:
    """One kind of hook point, e.g. ``attn.hook_q`` in every block."""

    suffix: str  # name after "blocks.L." (or the full name for model-level sites)
    dims: tuple[str | int, ...]
    per_layer: bool = True

    def name(self, layer: int | None = None) -> str:
        return f"blocks.{layer}.{self.suffix}" if self.per_layer else self.suffix


_KINDS = [
    SiteKind("embed.ln.hook_scale", ("batch", "pos", 1), per_layer=False),  # Bloom: a LayerNorm after the embedding
    SiteKind("embed.ln.hook_normalized", ("batch", "pos", "d_model"), per_layer=False),
    SiteKind("hook_embed", ("batch", "pos", "d_model"), per_layer=False),
    SiteKind("hook_pos_embed", ("batch", "pos", "d_model"), per_layer=False),
    SiteKind("hook_resid_pre", ("batch", "pos", "d_model")),
    # only with set_use_attn_in / set_use_split_qkv_input: the attention's input repeated per head
    SiteKind("hook_attn_in", ("batch", "pos", "n_heads", "d_model")),
    SiteKind("hook_q_input", ("batch", "pos", "n_heads", "d_model")),
    SiteKind("hook_k_input", ("batch", "pos", "n_key_value_heads", "d_model")),
    SiteKind("hook_v_input", ("batch", "pos", "n_key_value_heads", "d_model")),
    SiteKind("ln1.hook_scale", ("batch", "pos", 1)),
    SiteKind("ln1.hook_normalized", ("batch", "pos", "d_model")),
    SiteKind("attn.hook_q", ("batch", "pos", "n_heads", "d_head")),
    SiteKind("attn.hook_k", ("batch", "pos", "n_key_value_heads", "d_head")),
    SiteKind("attn.hook_v", ("batch", "pos", "n_key_value_heads", "d_head")),
    # Qwen3-style RMS norms of each head's query/key (TL's attn.q_norm/k_norm; TL flattens them to
    # [batch*pos*heads, …], graphlens keeps the batch, position and head axes)
    SiteKind("attn.q_norm.hook_scale", ("batch", "pos", "n_heads", 1)),
    SiteKind("attn.q_norm.hook_normalized", ("batch", "pos", "n_heads", "d_head")),
    SiteKind("attn.k_norm.hook_scale", ("batch", "pos", "n_key_value_heads", 1)),
    SiteKind("attn.k_norm.hook_normalized", ("batch", "pos", "n_key_value_heads", "d_head")),
    SiteKind("attn.hook_rot_q", ("batch", "pos", "n_heads", "d_head")),
    SiteKind("attn.hook_rot_k", ("batch", "pos", "n_key_value_heads", "d_head")),
    SiteKind("attn.hook_attn_scores", ("batch", "n_heads", "query_pos", "key_pos")),
    SiteKind("attn.hook_pattern", ("batch", "n_heads", "query_pos", "key_pos")),
    SiteKind("attn.hook_z", ("batch", "pos", "n_heads", "d_head")),
    SiteKind("attn.hook_result", ("batch", "pos", "n_heads", "d_model")),  # only with set_use_attn_result
    SiteKind("ln1_post.hook_scale", ("batch", "pos", 1)),  # Gemma 2: norms after attention and MLP too
    SiteKind("ln1_post.hook_normalized", ("batch", "pos", "d_model")),
    SiteKind("hook_attn_out", ("batch", "pos", "d_model")),
    SiteKind("hook_resid_mid", ("batch", "pos", "d_model")),
    SiteKind("hook_mlp_in", ("batch", "pos", "d_model")),  # only with set_use_hook_mlp_in
    SiteKind("ln2.hook_scale", ("batch", "pos", 1)),
    SiteKind("ln2.hook_normalized", ("batch", "pos", "d_model")),
    SiteKind("mlp.hook_pre", ("batch", "pos", "d_mlp")),
    SiteKind("mlp.hook_pre_linear", ("batch", "pos", "d_mlp")),
    SiteKind("mlp.hook_post", ("batch", "pos", "d_mlp")),
    SiteKind("ln2_post.hook_scale", ("batch", "pos", 1)),
    SiteKind("ln2_post.hook_normalized", ("batch", "pos", "d_model")),
    SiteKind("hook_mlp_out", ("batch", "pos", "d_model")),
    SiteKind("hook_resid_post", ("batch", "pos", "d_model")),
    SiteKind("ln_final.hook_scale", ("batch", "pos", 1), per_layer=False),
    SiteKind("ln_final.hook_normalized", ("batch", "pos", "d_model"), per_layer=False),
    SiteKind("unembed.hook_in", ("batch", "pos", "d_model"), per_layer=False),
    SiteKind("unembed.hook_out", ("batch", "pos", "d_vocab_out"), per_layer=False),
]
KINDS: dict[str, SiteKind] = {k.suffix: k for k in _KINDS}

# model-level sites before the blocks (the rest come after them), in TransformerLens' order
EMBED_SITES = ("embed.ln.hook_scale", "embed.ln.hook_normalized", "hook_embed", "hook_pos_embed")

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def split_name(name: str) -> tuple[int | None, str]:
    """``"blocks.3.attn.hook_q"`` → ``(3, "attn.hook_q")``; model-level names get layer None."""
    match = _LAYER_RE.match(name)
    if match:
        return int(match.group(1)), match.group(2)
    return None, name


# --- hooks an attached SAE, transcoder or probe adds under a site (``graphlens.saes``) ----------------
# SAELens' HookedSAETransformer names, in the order its forward calls them
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output")
# the width of each (the config's ``sae_dims`` holds it per site); output and error have the site's shape
_SAE_WIDTH = {"hook_sae_input": "d_in", "hook_sae_acts_pre": "d_sae", "hook_sae_acts_post": "d_sae",
              "hook_sae_recons": "d_out"}
PROBE_INFIX = ".probe."
SAE_DIMS = "sae_dims"  # config field: "<site>.d_in" / ".d_sae" / ".d_out", "<probe hook>.d_out" → size


def attached_base(name: str) -> str | None:
    """The site an SAE or probe hook hangs under (``blocks.0.hook_z.hook_sae_acts_post`` → ``blocks.0.hook_z``)."""
    if PROBE_INFIX in name:
        return name.split(PROBE_INFIX, 1)[0]
    base, _, last = name.rpartition(".")
    return base if last in SAE_HOOKS and base else None


def sae_dim_label(site: str, width: str) -> str:
    """The ``sae_dims`` key of one width of what is attached at ``site`` (``d_in``, ``d_sae``, ``d_out``)."""
    return f"{site}.{width}"


def _attached_kind(name: str, base: str) -> SiteKind:
    layer, suffix = split_name(name)
    if PROBE_INFIX in name:
        dims: tuple = ("batch", "pos", sae_dim_label(name, "d_out"))
    elif name.rpartition(".")[2] in _SAE_WIDTH:
        dims = ("batch", "pos", sae_dim_label(base, _SAE_WIDTH[name.rpartition(".")[2]]))
    else:
        dims = kind_of(base).dims
    return SiteKind(suffix, dims, per_layer=layer is not None)


def kind_of(name: str) -> SiteKind:
    base = attached_base(name)
    if base is not None:
        return _attached_kind(name, base)
    return KINDS[split_name(name)[1]]


def _size(dim: str, cfg: dict) -> int:
    if dim in cfg:
        return int(cfg[dim])
    return int((cfg.get(SAE_DIMS) or {})[dim])


def concrete_shape(dims: Iterable[str | int], cfg: dict) -> list[str | int]:
    """Replace config dims by numbers; symbolic dims stay names (as in the ONNX graph)."""
    return [d if isinstance(d, int) or d in SYMBOLIC_DIMS else _size(d, cfg) for d in dims]


def site_dims(name: str, cfg: dict) -> list[str | int]:
    """Site ``name``'s shape in a model with config ``cfg``: the table's, except that ln1 gains a head axis
    under use_split_qkv_input (the value input's n_key_value_heads: TransformerLens caches ln1's last call)
    or use_attn_in (n_heads), as TransformerLens applies ln1 to each head's copy of the input."""
    dims = list(kind_of(name).dims)
    if split_name(name)[1].startswith("ln1.") and (cfg.get("use_split_qkv_input") or cfg.get("use_attn_in")):
        dims.insert(2, "n_key_value_heads" if cfg.get("use_split_qkv_input") else "n_heads")
    return concrete_shape(dims, cfg)


def hooks_matching(names: Iterable[str], pattern: str) -> list[str]:
    """The names matching ``pattern``: a glob when it has ``*?[``, otherwise a substring (in ``names``' order)."""
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [n for n in names if pattern in n]


def ordered_hook_names(suffixes_per_block: list[str], model_level: list[str], n_layers: int) -> list[str]:
    """Hook names in TransformerLens' forward order (the order its cache lists them in)."""
    before = [s for s in model_level if s in EMBED_SITES]
    after = [s for s in model_level if s not in before]
    names = list(before)
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{s}" for s in suffixes_per_block]
    return names + after


def forward_sorted(names: Iterable[str]) -> list[str]:
    """Hook names in TransformerLens' forward order: embeddings, blocks (kinds in table order), the rest."""
    order = {suffix: i for i, suffix in enumerate(KINDS)}

    def key(name: str) -> tuple:
        base = attached_base(name)
        if base is not None:  # right after its site: SAE hooks in SAELens' order, then probes
            last = name.rpartition(".")[2]
            return (*key(base), SAE_HOOKS.index(last) + 1 if PROBE_INFIX not in name else len(SAE_HOOKS) + 1, name)
        layer, suffix = split_name(name)
        if layer is not None:
            return (1, layer, order[suffix])
        return (0 if suffix in EMBED_SITES else 2, 0, order[suffix])

    return sorted(names, key=key)


# --- TransformerLens' shorthand names (utils.get_act_name), re-implemented ---------------------------
_LAYER_TYPE_ALIAS = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ACT_ALIAS = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_ACTS = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """Full hook name from TransformerLens shorthand: ``get_act_name("pattern", 3)`` → ``blocks.3.attn.hook_pattern``."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.match(r"([a-z]+)(\d+)([a-z]?.*)", name)
    if match is not None:
        name, layer, layer_type = match.groups(0)  # type: ignore[assignment]
    name = _ACT_ALIAS.get(name, name)
    full = f"blocks.{layer}." if layer is not None else ""
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIAS:
        layer_type = _LAYER_TYPE_ALIAS[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


def match_hooks(names: list[str], pattern: str, option: str = "") -> list[str]:
    """``hooks_matching``, or every hook for ``"all"``; no match is an error naming the pattern (and the
    ``option`` it came from)."""
    chosen = list(names) if pattern == "all" else hooks_matching(names, pattern)
    if not chosen:
        given = f"{option} {pattern!r} matches no hook" if option else f"no hook name matches {pattern!r}"
        raise InputError(
            f"{given} (a glob such as 'blocks.*.attn.hook_pattern', a substring such as 'resid_post', or 'all'); "
            f"the model has {len(names)} hooks, e.g. {', '.join(names[:3])}"
        )
    return chosen


def select_hooks(names: Sequence[str], patterns: Iterable[str], option: str = "") -> list[str]:
    """Hooks matching any of ``patterns`` (each as ``match_hooks``), in ``names``' order."""
    chosen = {hook for pattern in patterns for hook in match_hooks(list(names), pattern, option)}
    return [name for name in names if name in chosen]
