"""The generic adapter: a decoder-only HF model built from standard parts, described by a *layout*.

A layout is plain data (module paths and a few flags) that ``graphlens.export.discover`` finds in the
HF model: a module list of blocks, each with one norm before attention (and one before the MLP, unless
the block is parallel and shares it), an attention module that calls transformers' attention interface
with separate q/k/v/o ``nn.Linear`` projections, a plain or gated MLP of ``nn.Linear`` layers, a final
norm and the lm_head. The layout is stored in the bundle's config (``hf_layout``), so the runtime
rebuilds the same parameter table from the manifest alone (``GENERIC.read_weights`` / ``write_weights``).

Layout keys: ``embed``, ``pos_embed`` (or None), ``blocks`` (the module list), per block ``attn``,
``q``/``k``/``v`` or one fused ``qkv`` (``qkv_layout``: "concat" or "per_head") and ``o`` (inside ``attn``), ``mlp``, ``up``/``gate`` (None: plain MLP)/``down`` (inside
``mlp``), ``ln1``, ``ln2`` (None: one norm feeds attention and MLP), then ``ln_final``, ``lm_head``,
``norm_type`` ("LN"/"RMS"), ``norm_bias``, ``norm_offset`` (RMSNorm scaling by ``offset + w``), ``rotary``, ``parallel``.
"""

from __future__ import annotations

import numpy as np

from graphlens.architectures.base import (Architecture, AttentionSites, Mark, Norm, TLWeights, heads_from_linear,
                                          heads_to_linear)
from graphlens.architectures.params import (LINEAR_OUT, PER_HEAD_QKV, PER_HEAD_QKV_BIAS, QKV, QKV_BIASES, SAME,
                                            TRANSPOSED, Layout, Param, ParamTable, linear_mlp_rows, norm_rows, offset,
                                            separate_qkv_rows, unembed_rows)
from graphlens.errors import BundleError

NAME = "generic"
# one HF norm that TransformerLens would hold as ln1 and ln2 (parallel block, shared norm): writing takes ln1's
_SHARED = Layout(lambda a, cfg: (a, a), lambda t, cfg: t[0])


def _paths(layout: dict) -> dict:
    """Full module paths (``{layer}`` for per-block ones) from a layout's relative names."""
    block = f"{layout['blocks']}.{{layer}}"
    attn, mlp = f"{block}.{layout['attn']}", f"{block}.{layout['mlp']}"
    inside = lambda name: f"{attn}.{layout[name]}" if layout.get(name) else None  # noqa: E731
    return dict(
        block=block, attn=attn, mlp=mlp, q=inside("q"), k=inside("k"), v=inside("v"), qkv=inside("qkv"), o=inside("o"),
        up=f"{mlp}.{layout['up']}", down=f"{mlp}.{layout['down']}",
        gate=f"{mlp}.{layout['gate']}" if layout.get("gate") else None,
        ln1=f"{block}.{layout['ln1']}", ln2=f"{block}.{layout['ln2']}" if layout.get("ln2") else None,
    )


def param_table(layout: dict) -> ParamTable:
    """The HF ↔ TransformerLens parameter table of a layout (biases HF lacks are TL zeros)."""
    p = _paths(layout)
    bias, norm_layout = layout["norm_bias"], offset(layout["norm_offset"]) if layout["norm_offset"] else SAME
    rows: list[Param] = [Param(f"{layout['embed']}.weight", "embed.W_E")]
    if layout.get("pos_embed"):
        rows.append(Param(f"{layout['pos_embed']}.weight", "pos_embed.W_pos"))
    if p["ln2"]:
        rows += norm_rows(p["ln1"], "blocks.{layer}.ln1", bias, norm_layout)
        rows += norm_rows(p["ln2"], "blocks.{layer}.ln2", bias, norm_layout)
    else:
        shared = Layout(lambda a, cfg: norm_layout.to_tl(a, cfg) * 2, lambda t, cfg: norm_layout.to_hf(t, cfg))
        for kind in ("weight", "bias")[: 1 + bias]:
            tl = ("w", "b")[kind == "bias"]
            rows.append(Param(f"{p['ln1']}.{kind}", (f"blocks.{{layer}}.ln1.{tl}", f"blocks.{{layer}}.ln2.{tl}"),
                              shared if kind == "weight" else _SHARED, missing="skip"))
    if p["qkv"]:
        weights, biases = _FUSED[layout["qkv_layout"]]
        rows += [Param(f"{p['qkv']}.weight", QKV, weights), Param(f"{p['qkv']}.bias", QKV_BIASES, biases, missing="zeros"),
                 Param(f"{p['o']}.weight", "blocks.{layer}.attn.W_O", LINEAR_OUT),
                 Param(f"{p['o']}.bias", "blocks.{layer}.attn.b_O", missing="zeros")]
    else:
        rows += separate_qkv_rows(p["attn"], layout["q"], layout["k"], layout["v"], layout["o"],
                                  kv_heads="n_key_value_heads")
    rows += linear_mlp_rows(p["up"], p["down"], biases="zeros")
    if p["gate"]:
        # TransformerLens has no b_gate; mapping one lets fold_ln fold a LayerNorm bias into the gate exactly
        rows += [Param(f"{p['gate']}.weight", "blocks.{layer}.mlp.W_gate", TRANSPOSED),
                 Param(f"{p['gate']}.bias", "blocks.{layer}.mlp.b_gate", missing="zeros")]
    rows += norm_rows(layout["ln_final"], "ln_final", bias, norm_layout)
    rows += unembed_rows(layout["lm_head"])
    return ParamTable(tuple(rows))


def _concat_sizes(cfg: dict) -> list[int]:
    """Where q ends and k ends in a [q | k | v] projection's output rows."""
    q, kv = cfg["n_heads"] * cfg["d_head"], cfg["n_key_value_heads"] * cfg["d_head"]
    return [q, q + kv]


def _concat_to_tl(a: np.ndarray, cfg: dict) -> tuple[np.ndarray, ...]:
    q, k, v = np.split(a, _concat_sizes(cfg), axis=0)
    heads = (cfg["n_heads"], cfg["n_key_value_heads"], cfg["n_key_value_heads"])
    if a.ndim == 1:
        return tuple(x.reshape(h, -1) for x, h in zip((q, k, v), heads))
    return tuple(heads_from_linear(x, h) for x, h in zip((q, k, v), heads))


def _concat_to_hf(t: tuple[np.ndarray, ...], cfg: dict) -> np.ndarray:
    if t[0].ndim == 2:
        return np.concatenate([x.reshape(-1) for x in t])
    return np.concatenate([heads_to_linear(x) for x in t], axis=0)


# one nn.Linear holding q, k, v: rows [q | k | v] (GPTBigCode, multi-query) or per head [h, 3, d] (NeoX's layout)
_CONCAT = Layout(_concat_to_tl, _concat_to_hf)
_FUSED = {"concat": (_CONCAT, _CONCAT), "per_head": (PER_HEAD_QKV, PER_HEAD_QKV_BIAS)}


def _layout_of(cfg: dict) -> dict:
    layout = cfg.get("hf_layout")
    if not isinstance(layout, dict):
        raise BundleError("a generic-adapter bundle needs config.hf_layout (the module layout found at export); "
                          "re-export the model with this graphlens")
    return layout


def _read(params, cfg: dict, part=None) -> TLWeights:
    return param_table(_layout_of(cfg)).read(params, cfg, part)


def _write(tl: TLWeights, cfg: dict, part=None) -> dict:
    return param_table(_layout_of(cfg)).write(tl, cfg, part)


def _zero_biases(layout: dict) -> tuple[str, ...]:
    """Linear layers processing can give a bias: q/k/v/MLP-in/gate (folded LayerNorm biases), o/MLP-out
    (centring, b_V)."""
    p = _paths(layout)
    if layout["norm_type"] == "LN":
        return tuple(p[n] for n in ("q", "k", "v", "qkv", "o", "up", "gate", "down") if p[n])
    return (p["o"],)


def _marks(layout: dict) -> tuple[Mark, ...]:
    p = _paths(layout)
    marks = [Mark("hook_embed", layout["embed"])]
    if layout.get("pos_embed"):
        marks.append(Mark("hook_pos_embed", layout["pos_embed"]))
    marks.append(Mark("hook_resid_pre", p["block"], at="input"))
    if layout["rotary"]:  # the attention function sees the rotated query/key: hook_q/hook_k are the projections
        marks += [Mark("attn.hook_q", p["q"], heads="n_heads"), Mark("attn.hook_k", p["k"], heads="n_key_value_heads")]
    marks.append(Mark("hook_attn_out", p["attn"]))
    if not layout["parallel"]:
        marks.append(Mark("hook_resid_mid", p["ln2"], at="input"))
    if p["gate"]:
        marks += [Mark("mlp.hook_pre", p["gate"]), Mark("mlp.hook_pre_linear", p["up"])]
    else:
        marks.append(Mark("mlp.hook_pre", p["up"]))
    marks += [Mark("mlp.hook_post", p["down"], at="input"), Mark("hook_mlp_out", p["mlp"]),
              Mark("hook_resid_post", p["block"]),
              Mark("unembed.hook_in", layout["lm_head"], at="input"), Mark("unembed.hook_out", layout["lm_head"])]
    return tuple(marks)


def _norms(layout: dict) -> tuple[Norm, ...]:
    p, w = _paths(layout), float(layout["norm_offset"])
    ln2 = Norm("ln2", p["ln2"], w) if p["ln2"] else Norm("ln2", p["ln1"], w, feeds=p["mlp"])
    return Norm("ln1", p["ln1"], w), ln2, Norm("ln_final", layout["ln_final"], w)


def _no_config(hf: dict) -> dict:
    raise BundleError("the generic adapter's config comes from the model's layout (graphlens.export.discover)")


GENERIC = Architecture(
    name=NAME,
    hf_architectures=(),
    hub_examples=(),
    description="any decoder-only model built from standard parts (found in the model at export)",
    marks=(),
    norms=(),
    attention=AttentionSites(""),
    config_from_hf=_no_config,
    read_weights=_read,
    write_weights=_write,
)


def generic_for(layout: dict, config: dict) -> Architecture:
    """The full adapter (sites included) of a discovered ``layout``; ``config``: its TL config."""
    attention = AttentionSites(_paths(layout)["attn"], *(("attn.hook_rot_q", "attn.hook_rot_k") if layout["rotary"]
                                                         else ("attn.hook_q", "attn.hook_k")))
    return Architecture(
        name=NAME,
        hf_architectures=(),
        hub_examples=(),
        description=GENERIC.description,
        marks=_marks(layout),
        norms=_norms(layout),
        attention=attention,
        config_from_hf=lambda hf: dict(config),
        read_weights=_read,
        write_weights=_write,
        zero_biases=_zero_biases(layout),
    )
