"""Put graphlens' site markers into an HF torch model, as its architecture adapter declares them.

Three mechanisms, all deterministic: forward (pre-)hooks on the modules the adapter names, norm modules
swapped for ones that expose hook_scale/hook_normalized, and an attention function registered with
transformers that computes scores, pattern and z in TransformerLens' form (masked scores are -inf).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface

from graphlens.architectures import Architecture
from graphlens.export.markers import site
from graphlens.sites import kind_of

ATTN_IMPLEMENTATION = "graphlens"


class KVState:
    """What one decoder forward passes to the attention function besides HF's own arguments.

    ``key_mask [batch, past+new]`` (bool, False = padding, never attended), ``past``: per layer
    ``(key, value)`` as ``[batch, n_kv_heads, past, d_head]``; the attention function appends each
    layer's hooked new keys/values and records the result in ``present`` (TransformerLens caches the
    keys after hook_k/hook_v, so a patch at those sites reaches later steps too). ``past=None``: a
    forward without a KV cache (the full graph), masked the same way.
    """

    def __init__(self, key_mask: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]] | None):
        self.key_mask, self.past = key_mask, past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []


class KVSlot:
    """Shared by the wrapper and every attention module: holds the KVState of the running forward."""

    state: KVState | None = None


def _attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None,
               sliding_window=None, alibi=None, **kwargs):
    """Eager attention with every TransformerLens attention site marked. Shapes: query [b, h, q, d_head].

    ``alibi``: per-head ALiBi slopes [h] (Bloom): the scores get ``slope · (key_pos − query_pos)``, as
    TransformerLens adds them (relative, so a row's shift HF adds too leaves the pattern unchanged)."""
    prefix, spec = module._graphlens_prefix, module._graphlens_sites
    q, k = query.transpose(1, 2), key.transpose(1, 2)  # [b, q, h, d_head], [b, k, h_kv, d_head]
    if spec.query_site:
        q = site(q, f"{prefix}.{spec.query_site}")
    if spec.key_site:
        k = site(k, f"{prefix}.{spec.key_site}")
    v = site(value.transpose(1, 2), f"{prefix}.attn.hook_v")
    n_rep = q.shape[2] // k.shape[2]
    k_heads, v_heads = k.transpose(1, 2), v.transpose(1, 2)  # [b, h_kv, k, d_head]
    state = module._graphlens_kv.state
    if state is not None and state.past is not None:
        past_k, past_v = state.past[module._graphlens_layer]
        k_heads, v_heads = torch.cat([past_k, k_heads], dim=2), torch.cat([past_v, v_heads], dim=2)
        state.present.append((k_heads, v_heads))
    if n_rep > 1:
        k_heads = k_heads.repeat_interleave(n_rep, dim=1)
        v_heads = v_heads.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(q.transpose(1, 2), k_heads.transpose(-1, -2)) * scaling  # [b, h, q, k]
    if softcap:  # Gemma 2, as TransformerLens: before the mask, so masked scores stay -inf
        scores = torch.tanh(scores / softcap) * softcap
    q_len, k_len = scores.shape[-2], scores.shape[-1]
    query_pos = torch.arange(q_len, device=scores.device)[:, None] + (k_len - q_len)
    key_pos = torch.arange(k_len, device=scores.device)[None, :]
    if alibi is not None:
        scores = scores + _alibi_bias(alibi, key_pos - query_pos, state).to(scores.dtype)
    if state is not None or attention_mask is None:
        allowed = key_pos <= query_pos
        if state is not None:  # TransformerLens: causal and not padding
            allowed = allowed & state.key_mask[:, None, None, :]
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask == 0
    if sliding_window:  # local layers: key j is visible from query i only if i - j < window
        allowed = allowed & (key_pos > query_pos - sliding_window)
    scores = torch.where(allowed, scores, torch.full((), float("-inf"), dtype=scores.dtype))
    scores = site(scores, f"{prefix}.attn.hook_attn_scores")
    pattern = torch.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros((), dtype=pattern.dtype), pattern)
    pattern = site(pattern, f"{prefix}.attn.hook_pattern")
    z = site(torch.matmul(pattern, v_heads).transpose(1, 2), f"{prefix}.attn.hook_z")  # [b, q, h, d_head]
    return z, pattern


def _alibi_bias(slopes: torch.Tensor, relative: torch.Tensor, state: KVState | None) -> torch.Tensor:
    """``slopes[h] · min(key_pos − query_pos, 0)`` as [b, h, q, k]: with a KVState the positions come from its
    key mask's shape, so the bias is batch-major like every tensor a graph cut may cross (runtime.sweep)."""
    if state is not None:
        key_pos = torch.ones_like(state.key_mask, dtype=slopes.dtype).cumsum(-1)  # [b, k]: 1 … k
        relative = key_pos[:, None, :] - key_pos[:, -relative.shape[0]:, None]  # [b, q, k]
        return slopes[None, :, None, None] * relative[:, None].clamp(max=0)
    return slopes[:, None, None] * relative.clamp(max=0).to(slopes.dtype)


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)


class TokenShape:
    """The [batch, pos] of the running block, for sites inside modules that flatten tokens."""

    shape: tuple | None = None


def _site(x: torch.Tensor, name: str, tokens: TokenShape | None = None) -> torch.Tensor:
    """``site``; a flattened [batch*pos, …] tensor is marked as [batch, pos, …], the site table's shape."""
    if tokens is not None and tokens.shape is not None and x.ndim == len(kind_of(name).dims) - 1:
        return site(x.reshape(*tokens.shape, *x.shape[1:]), name).reshape(x.shape)
    return site(x, name)


def norm_eps(module: nn.Module) -> float:
    """A norm module's epsilon (``eps``, ``variance_epsilon`` or ``epsilon``; else 1e-5)."""
    for name in ("eps", "variance_epsilon", "epsilon"):
        if isinstance(getattr(module, name, None), (int, float)):
            return float(getattr(module, name))
    return 1e-5


class HookedNorm(nn.Module):
    """LayerNorm / RMSNorm written out so that its scale and normalized input are sites (TL's LayerNorm)."""

    def __init__(self, inner: nn.Module, prefix: str, rms: bool, weight_offset: float = 0.0,
                 tokens: TokenShape | None = None, heads_first: bool = False):
        super().__init__()
        self.heads_first = heads_first
        self.weight = getattr(inner, "weight", None)  # None: a norm without parameters (OLMo's LayerNorm)
        self.bias = getattr(inner, "bias", None)
        self.eps = norm_eps(inner)
        self.prefix, self.rms, self.weight_offset, self.tokens = prefix, rms, weight_offset, tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_as(x, self.prefix)

    def apply_as(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """The norm with its sites named ``prefix`` (another name: TL's second copy of a shared norm)."""
        if self.heads_first:  # [batch, heads, pos, d_head]: normalised per vector, sites as [batch, pos, heads, …]
            return self._normed(x.transpose(1, 2), prefix).transpose(1, 2)
        return self._normed(x, prefix)

    def _normed(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        if not self.rms:
            x = x - x.mean(-1, keepdim=True)
        scale = _site((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt(), f"{prefix}.hook_scale", self.tokens)
        # an offset weight is one Add on the parameter: folding it away leaves x * offset
        out = _site(x / scale, f"{prefix}.hook_normalized", self.tokens)
        if self.weight is not None:
            out = out * (self.weight + self.weight_offset if self.weight_offset else self.weight)
        return out + self.bias if self.bias is not None else out


def _feed_norm_copy(source: nn.Module, target: nn.Module, prefix: str) -> None:
    """``target`` reads ``source`` (an installed HookedNorm) applied again to its input, as sites ``prefix``."""
    if not isinstance(source, HookedNorm):
        raise TypeError("a norm copy needs its norm installed first (list it earlier in the adapter's norms)")
    seen: dict[str, torch.Tensor] = {}

    def keep_input(module, args):
        seen["x"] = args[0]

    def replace_input(module, args):
        # through the registered source module, so the export sees its parameters (not constants)
        return (source.apply_as(seen.pop("x"), prefix), *args[1:])

    source.register_forward_pre_hook(keep_input)
    target.register_forward_pre_hook(replace_input)


def _mark_part(x: torch.Tensor, name: str, heads: int, part: tuple[int, int]) -> torch.Tensor:
    """Mark one of ``count`` projections fused per head in ``x [..., heads*count*d_head]``."""
    index, count = part
    pieces = list(x.reshape(*x.shape[:-1], heads, count, -1).unbind(-2))
    pieces[index] = site(pieces[index], name)
    return torch.stack(pieces, dim=-2).reshape(x.shape)


def _mark_span(x: torch.Tensor, name: str, heads: int | None, span: tuple[int, int]) -> torch.Tensor:
    """Mark the last-axis slice ``span`` of ``x`` (viewed as [..., heads, d_head] when ``heads``)."""
    start, stop = span
    piece = x[..., start:stop]
    marked = site(piece.reshape(*piece.shape[:-1], heads, -1), name).reshape(piece.shape) if heads else site(piece, name)
    return torch.cat([x[..., :start], marked, x[..., stop:]], dim=-1)


def _mark_output(name: str, heads: int | None, part: tuple[int, int] | None = None, tokens: TokenShape | None = None,
                 span: tuple[int, int] | None = None):
    def hook(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        if span:
            marked = _mark_span(first, name, heads, span)
        elif part:
            marked = _mark_part(first, name, heads, part)
        elif heads:
            shape = first.shape
            marked = site(first.reshape(*shape[:-1], heads, -1), name).reshape(shape)
        else:
            marked = _site(first, name, tokens)
        return (marked, *output[1:]) if isinstance(output, tuple) else marked

    return hook


def _first_input(args: tuple, kwargs: dict) -> tuple[str | int, torch.Tensor]:
    if args:
        return 0, args[0]
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return key, kwargs[key]


def _mark_input(name: str, tokens: TokenShape | None = None):
    def hook(module, args, kwargs):
        key, x = _first_input(args, kwargs)
        if key == 0:
            return (_site(x, name, tokens), *args[1:]), kwargs
        return args, {**kwargs, key: _site(x, name, tokens)}

    return hook


def _record_tokens(tokens: TokenShape):
    def hook(module, args, kwargs):
        tokens.shape = tuple(_first_input(args, kwargs)[1].shape[:2])

    return hook


def _layers_of(path: str, n_layers: int) -> list[int | None]:
    return list(range(n_layers)) if "{layer}" in path else [None]


def _site_name(suffix: str, layer: int | None) -> str:
    return f"blocks.{layer}.{suffix}" if layer is not None else suffix


def _zero_padded_positions(slot: KVSlot):
    # TransformerLens gives padding positions a zero positional embedding
    def hook(module, args, output):
        if slot.state is None:
            return output
        new_pad = ~slot.state.key_mask[:, -output.shape[1]:, None]
        return torch.where(new_pad, torch.zeros((), dtype=output.dtype), output)

    return hook


def instrument(model: nn.Module, arch: Architecture, cfg: dict) -> KVSlot:
    """Install every site marker of ``arch`` into ``model`` (in place).

    Returns the slot through which a decoder wrapper hands past keys/values and the padding mask to
    the attention function (unused by a plain forward).
    """
    n_layers = cfg["n_layers"]
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    slot = KVSlot()
    tokens = TokenShape() if arch.flat_tokens_in else None
    if tokens is not None:
        for layer in range(n_layers):
            block = model.get_submodule(arch.flat_tokens_in.format(layer=layer))
            block.register_forward_pre_hook(_record_tokens(tokens), with_kwargs=True)
    for mark in arch.marks:
        if mark.site == "hook_pos_embed":  # before the marker's hook, so the site sees the zeros
            model.get_submodule(mark.module).register_forward_hook(_zero_padded_positions(slot))
    for norm in arch.norms:
        for layer in _layers_of(norm.module, n_layers):
            path = norm.module.format(layer=layer)
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            prefix = _site_name(norm.prefix, layer)
            rms = cfg["normalization_type"] == "RMS"
            if norm.feeds:
                _feed_norm_copy(getattr(parent, child), model.get_submodule(norm.feeds.format(layer=layer)), prefix)
            else:
                setattr(parent, child, HookedNorm(getattr(parent, child), prefix, rms, norm.weight_offset, tokens,
                                                  norm.heads_first))
    for mark in arch.marks:
        for layer in _layers_of(mark.module, n_layers):
            module = model.get_submodule(mark.module.format(layer=layer))
            name = _site_name(mark.site, layer)
            if mark.at == "input":
                module.register_forward_pre_hook(_mark_input(name, tokens), with_kwargs=True)
            else:
                heads = cfg[mark.heads] if mark.heads else None
                span = mark.span(cfg) if mark.span else None
                module.register_forward_hook(_mark_output(name, heads, mark.part, tokens, span))
    for layer in range(n_layers):
        attn = model.get_submodule(arch.attention.module.format(layer=layer))
        attn._graphlens_prefix = f"blocks.{layer}"
        attn._graphlens_sites = arch.attention
        attn._graphlens_layer, attn._graphlens_kv = layer, slot
        if arch.attention.replace:
            from graphlens.export.own_attention import replace_attention

            replace_attention(attn, *arch.attention.replace, cfg, layer)
    return slot
