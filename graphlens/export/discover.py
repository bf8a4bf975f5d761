"""Find the generic adapter's layout in an HF model: one probe forward, every part placed or named.

The probe runs the model once on a few tokens with a forward hook on every module and an attention
function registered with transformers that records its arguments. Parts are placed by what the
tensors show, not by names alone: ln1 is the norm whose output the attention reads, the MLP the block
child whose output is not the attention's, gate and up by which one reproduces the down projection's
input through the activation, each norm is checked to compute LayerNorm or RMSNorm exactly as
graphlens' hooked norm does. Anything that holds parameters and has no place is an
``UnsupportedArchitectureError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.activations import ACT2FN

from graphlens.architectures.base import rope_parameters
from graphlens.errors import UnsupportedArchitectureError
from graphlens.export.instrument import norm_eps

_PROBE = "graphlens_probe"
_PROBE_TOKENS = 5
_QKV_NAMES = {"q": ("q_proj", "query", "q", "wq", "q_lin"), "k": ("k_proj", "key", "k", "wk", "k_lin"),
              "v": ("v_proj", "value", "v", "wv", "v_lin")}
_OFFSETS = (0.0, 1.0)  # RMSNorm scaling by w, or by 1 + w (Gemma-style)


@dataclass
class _Call:
    path: str
    module: nn.Module
    x: torch.Tensor | None
    y: torch.Tensor | None


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _probe_attention(module, query, key, value, attention_mask, **kwargs):
    module._graphlens_probe.append(dict(query=query.detach().clone(), key=key.detach().clone(), value=value.detach().clone(),
                                        scaling=kwargs.get("scaling"), sliding_window=kwargs.get("sliding_window")))
    # plain causal attention: the probe compares tensors within its own forward, so the mask's form is moot
    n_rep = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(n_rep, dim=1), value.repeat_interleave(n_rep, dim=1)
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    scores = query @ key.transpose(-1, -2) * scaling
    causal = torch.ones(scores.shape[-2:], dtype=torch.bool).tril(scores.shape[-1] - scores.shape[-2])
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return (pattern @ value).transpose(1, 2).contiguous(), pattern


AttentionInterface.register(_PROBE, _probe_attention)


def _probe(model: nn.Module, vocab: int) -> tuple[list[_Call], list[tuple[nn.Module, dict]]]:
    calls: list[_Call] = []
    paths = {id(m): p for p, m in model.named_modules()}
    index: dict[int, list[int]] = {}

    def pre(module, args, kwargs):
        x = _first_tensor(args) if args else _first_tensor(kwargs.get("hidden_states", next(iter(kwargs.values()), None)))
        index.setdefault(id(module), []).append(len(calls))
        calls.append(_Call(paths[id(module)], module, None if x is None else x.detach().clone(), None))

    def post(module, args, kwargs, output):
        y = _first_tensor(output)
        calls[index[id(module)].pop()].y = None if y is None else y.detach().clone()

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
        module._graphlens_probe = []
    previous = model.config._attn_implementation
    model.set_attn_implementation(_PROBE)
    try:
        tokens = torch.randint(0, vocab, (1, _PROBE_TOKENS), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
        for h in handles:
            h.remove()
    attention = [(m, record) for m in model.modules() for record in m.__dict__.pop("_graphlens_probe", [])]
    return calls, attention


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5))


def _fail(part: str, why: str) -> UnsupportedArchitectureError:
    return UnsupportedArchitectureError(f"the generic adapter cannot place {part}: {why}")


def _norm_kind(call: _Call) -> tuple[str, bool, float] | None:
    """("LN" | "RMS", has bias, weight offset) when ``call`` computed exactly that norm, else None."""
    module, x, y = call.module, call.x, call.y
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1 or x is None or y is None or list(module.children()):
        return None
    eps = norm_eps(module)
    for kind in ("RMS", "LN"):
        centred = x - x.mean(-1, keepdim=True) if kind == "LN" else x
        normalized = centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        for offset in _OFFSETS:
            expected = normalized * (weight + offset) + (bias if isinstance(bias, torch.Tensor) else 0)
            if _same(y, expected):
                return kind, isinstance(bias, torch.Tensor), offset
    return None


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _relative(path: str, parent: str) -> str:
    return path[len(parent) + 1:]


def _block_list(model: nn.Module, n_layers: int) -> str:
    lists = [p for p, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(lists) != 1:
        raise _fail("the blocks", f"expected one module list of num_hidden_layers={n_layers} modules, found {lists or 'none'}")
    return lists[0]


def _qkv_role(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1]
    return next((role for role, names in _QKV_NAMES.items() if last in names), None)


def _unplaced(calls: list[_Call], scope: str, placed: set[str]) -> None:
    """Fail on the first module under ``scope`` that holds parameters and is none of ``placed``."""
    for call in calls:
        inside = call.path.startswith(scope + ".") if scope else True
        if inside and call.path not in placed and _has_params(call.module) and not any(
                call.path.startswith(p + ".") for p in placed):
            raise _fail(call.path, f"a {type(call.module).__name__} with parameters that is no part the generic adapter knows "
                                   "(norm before attention/MLP, q/k/v/o projections, MLP linears, embeddings, lm_head)")


def _activation(hf: dict):
    name = hf.get("hidden_act") or hf.get("hidden_activation") or hf.get("activation_function")
    if name not in ACT2FN:
        raise _fail("the MLP activation", f"the config names {name!r}, which transformers' ACT2FN does not know")
    return name, ACT2FN[name]


def _place_mlp(calls: list[_Call], mlp: _Call, hf: dict) -> dict:
    linears = [c for c in calls if c.path.startswith(mlp.path + ".") and isinstance(c.module, nn.Linear)]
    readers = [c for c in linears if _same(c.x, mlp.x)]
    downs = [c for c in linears if _same(c.y, mlp.y) and c not in readers]
    if len(downs) != 1 or len(readers) not in (1, 2) or len(linears) != len(readers) + 1:
        raise _fail(f"the MLP {mlp.path}", f"expected one or two nn.Linear reading its input and one writing its output, "
                                            f"found {[c.path for c in linears]}")
    down = downs[0]
    act_name, act = _activation(hf)
    if len(readers) == 1:
        if not _same(down.x, act(readers[0].y)):
            raise _fail(f"the MLP {mlp.path}", f"{down.path}'s input is not {act_name}({readers[0].path})")
        gate, up = None, readers[0]
    else:
        a, b = readers
        if _same(down.x, act(a.y) * b.y):
            gate, up = a, b
        elif _same(down.x, act(b.y) * a.y):
            gate, up = b, a
        else:
            raise _fail(f"the MLP {mlp.path}", f"{down.path}'s input is not {act_name}(gate)·up of {a.path}, {b.path}")
    rel = lambda c: _relative(c.path, mlp.path)  # noqa: E731
    return dict(up=rel(up), gate=rel(gate) if gate else None, down=rel(down), act_fn=act_name,
                d_mlp=up.module.out_features)


def _fused_layout(fused: torch.Tensor, value: torch.Tensor, n_heads: int) -> str | None:
    """How one projection's output ``[b, p, (h + 2·kv)·d]`` holds q, k, v: "concat" (all q, all k, all v;
    GPTBigCode's multi-query) or "per_head" ([h, 3, d]; NeoX), told by where the value heads are."""
    b, kv, p, d = value.shape
    v = value.transpose(1, 2).reshape(b, p, kv * d)
    if fused.shape[-1] == (n_heads + 2 * kv) * d and _same(fused[..., -kv * d:], v):
        return "concat"
    if kv == n_heads and fused.shape[-1] == 3 * n_heads * d and _same(
            fused.reshape(b, p, n_heads, 3, d)[..., 2, :].reshape(b, p, -1), v):
        return "per_head"
    return None


def _place_attention(calls: list[_Call], attn: _Call, record: dict) -> dict:
    linears = [c for c in calls if c.path.startswith(attn.path + ".") and isinstance(c.module, nn.Linear)]
    readers = [c for c in linears if _same(c.x, attn.x)]
    roles = {_qkv_role(c.path): c for c in readers}
    outs = [c for c in linears if c not in readers and _same(c.y, attn.y)]
    if len(outs) != 1 or len(linears) != len(readers) + 1:
        raise _fail(f"the attention output projection of {attn.path}", f"found {[c.path for c in linears]}")
    placed = {"q": None, "k": None, "v": None, "qkv": None, "qkv_layout": None, "o": _relative(outs[0].path, attn.path)}
    fused = _fused_layout(readers[0].y, record["value"], record["query"].shape[1]) if len(readers) == 1 else None
    if fused:
        placed.update(qkv=_relative(readers[0].path, attn.path), qkv_layout=fused)
    elif len(readers) == 3 and set(roles) == {"q", "k", "v"}:
        placed.update({role: _relative(c.path, attn.path) for role, c in roles.items()})
    else:
        raise _fail(f"the attention projections of {attn.path}",
                    f"expected q/k/v nn.Linear layers reading its input (separate, or one fused as [q|k|v] or per "
                    f"head), found {[c.path for c in readers]}")
    _unplaced(calls, attn.path, {c.path for c in linears})
    return placed


def discover(model: nn.Module, hf: dict) -> tuple[dict, dict]:
    """The layout of ``model`` (see ``graphlens.architectures.generic``) and its TransformerLens config."""
    n_layers = hf.get("num_hidden_layers") or hf.get("n_layer")
    if not n_layers:
        raise _fail("the blocks", "the config has no num_hidden_layers")
    blocks = _block_list(model, n_layers)
    embed_module, head_module = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(head_module, nn.Linear):
        raise _fail("the lm_head", f"the output embedding is a {type(head_module).__name__}, not an nn.Linear")
    calls, attention = _probe(model, embed_module.num_embeddings)
    by_path = {c.path: c for c in calls}
    block0 = f"{blocks}.0"
    attn_modules = {id(m) for m, _ in attention}
    attn_calls = [c for c in calls if id(c.module) in attn_modules and c.path.startswith(block0 + ".")]
    if len(attn_calls) != 1:
        raise _fail("the attention", "no module in the blocks calls transformers' attention interface "
                                     "(ALL_ATTENTION_FUNCTIONS); it computes attention itself")
    attn = attn_calls[0]
    record = next(r for m, r in attention if m is attn.module)
    block = by_path[block0]
    in_block = [c for c in calls if c.path.startswith(block0 + ".")]
    norms = {c.path: kind for c in in_block if (kind := _norm_kind(c)) is not None}
    ln1 = next((c for c in in_block if c.path in norms and _same(c.y, attn.x)), None)
    if ln1 is None:
        raise _fail(f"ln1 of {block0}", f"the input of {attn.path} is not the output of a LayerNorm/RMSNorm in the block")
    children = [c for c in in_block if "." not in _relative(c.path, block0)]
    mlps = [c for c in children if c.path not in norms and c is not attn and any(
        isinstance(m, nn.Linear) for m in c.module.modules())]
    if len(mlps) != 1:
        raise _fail(f"the MLP of {block0}", f"expected one block child with nn.Linear layers besides the attention, "
                                            f"found {[c.path for c in mlps]}")
    mlp = mlps[0]
    ln2 = next((c for c in in_block if c.path in norms and _same(c.y, mlp.x)), None)
    if ln2 is None:
        raise _fail(f"ln2 of {block0}", f"the input of {mlp.path} is not the output of a LayerNorm/RMSNorm in the block")
    shared = ln2.path == ln1.path
    parallel = shared or _same(ln2.x, block.x)
    kinds = {norms[ln1.path], norms[ln2.path]}

    final = next((c for c in calls if c.path in by_path and not c.path.startswith(blocks + ".")
                  and _norm_kind(c) is not None and _same(c.y, by_path[_path_of(model, head_module)].x)), None)
    if final is None:
        raise _fail("ln_final", "the lm_head's input is not the output of a LayerNorm/RMSNorm outside the blocks")
    kinds.add(_norm_kind(final))
    if len(kinds) != 1:
        raise _fail("the norms", f"they are not all of one kind: {sorted(map(str, kinds))}")
    norm_type, norm_bias, norm_offset = kinds.pop()

    embed, lm_head = _path_of(model, embed_module), _path_of(model, head_module)
    others = [c for c in calls if isinstance(c.module, nn.Embedding) and c.path != embed]
    pos_embed = others[0].path if len(others) == 1 and others[0].module.num_embeddings == _n_ctx(hf) else None
    attention_parts = _place_attention(calls, attn, record)
    mlp_parts = _place_mlp(calls, mlp, hf)
    placed = {ln1.path, ln2.path, attn.path, mlp.path}
    _unplaced(calls, block0, placed)
    _unplaced([c for c in calls if not c.path.startswith(blocks + ".")], "",
              {embed, lm_head, final.path, *([pos_embed] if pos_embed else [])})

    query, key = record["query"], record["key"]  # [batch, heads, pos, d_head]
    rotary = any("rotary" in type(m).__name__.lower() for m in model.modules())
    if rotary and attention_parts["qkv"]:
        raise _fail(f"hook_q/hook_k of {attn.path}", "rotary embeddings after a fused qkv projection have no place yet")
    if attention_parts["qkv"]:
        unrotated = True  # the value heads were found in the fused projection (_fused_layout)
    else:
        q_proj = by_path[f"{attn.path}.{attention_parts['q']}"].y
        unrotated = _same(query, q_proj.reshape(*q_proj.shape[:-1], query.shape[1], -1).transpose(1, 2))
    if not rotary and not unrotated:
        raise _fail(f"hook_q of {attn.path}", "the query the attention function receives is not its q projection's output "
                                              "and the model has no rotary embedding")
    layout = dict(
        embed=embed, pos_embed=pos_embed, blocks=blocks, attn=_relative(attn.path, block0), **attention_parts,
        mlp=_relative(mlp.path, block0), up=mlp_parts["up"], gate=mlp_parts["gate"], down=mlp_parts["down"],
        ln1=_relative(ln1.path, block0), ln2=None if shared else _relative(ln2.path, block0),
        ln_final=final.path, lm_head=lm_head, norm_type=norm_type, norm_bias=norm_bias, norm_offset=norm_offset,
        rotary=rotary, parallel=parallel,
    )
    d_head, n_heads, n_kv = query.shape[-1], query.shape[1], key.shape[1]
    scaling = record["scaling"] if record["scaling"] is not None else d_head ** -0.5
    rope = rope_parameters(hf)
    cfg = dict(
        d_model=embed_module.embedding_dim, d_head=d_head, n_heads=n_heads, n_key_value_heads=n_kv,
        d_mlp=mlp_parts["d_mlp"], n_layers=n_layers, n_ctx=_n_ctx(hf), d_vocab=embed_module.num_embeddings,
        d_vocab_out=head_module.out_features, act_fn=mlp_parts["act_fn"], eps=norm_eps(ln1.module),
        normalization_type=norm_type, positional_embedding_type="rotary" if rotary else "standard",
        rotary_dim=round(rope["partial_rotary_factor"] * d_head) if rotary else None,
        rotary_base=rope["rope_theta"], gated_mlp=mlp_parts["gate"] is not None, parallel_attn_mlp=parallel,
        final_rms=norm_type == "RMS", attn_scale=1.0 / float(scaling),
        original_architecture=(hf.get("architectures") or [type(model).__name__])[0], hf_layout=layout,
    )
    return layout, cfg


def _n_ctx(hf: dict) -> int:
    return int(hf.get("max_position_embeddings") or hf.get("n_positions") or hf.get("seq_length") or 2048)


def _path_of(model: nn.Module, module: nn.Module) -> str:
    return next(p for p, m in model.named_modules() if m is module)


def describe(layout: dict) -> str:
    """One line saying where the generic adapter placed each part (for the export's progress)."""
    mlp = f"{layout['mlp']} ({'gated: ' + layout['gate'] + ', ' if layout['gate'] else ''}{layout['up']}, {layout['down']})"
    ln2 = layout["ln2"] or f"{layout['ln1']} (shared)"
    qkv = f"fused {layout['qkv']} ({layout['qkv_layout']})" if layout["qkv"] else f"{layout['q']}, {layout['k']}, {layout['v']}"
    return (f"blocks {layout['blocks']}.*, {layout['norm_type']} norms {layout['ln1']}/{ln2}/{layout['ln_final']}, "
            f"{'positions ' + layout['pos_embed'] + ', ' if layout['pos_embed'] else ''}"
            f"attention {layout['attn']} ({qkv}, {layout['o']}"
            f"{', rotary' if layout['rotary'] else ''}), MLP {mlp}{', parallel' if layout['parallel'] else ''}")
