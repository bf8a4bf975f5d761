"""Where each TransformerLens weight lives among an HF model's parameters: one table per family.

A ``Param`` row pairs one HF parameter with the TransformerLens state-dict name(s) it holds and the
layout change between them. ``ParamTable.read`` (HF → TL) and ``ParamTable.write`` (TL → HF) walk the
same rows in opposite directions, so a family states its mapping once. Names may contain ``{layer}``:
such rows repeat for every block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

from graphlens.errors import BundleError
from graphlens.architectures.base import Params, TLWeights, heads_from_linear, heads_to_linear, merge_heads, split_heads


@dataclass(frozen=True)
class Layout:
    """How an HF array becomes the TL arrays of its row (``to_tl``), and back (``to_hf``)."""

    to_tl: Callable[[np.ndarray, dict], tuple[np.ndarray, ...]]
    to_hf: Callable[[tuple[np.ndarray, ...], dict], np.ndarray]


SAME = Layout(lambda a, cfg: (a,), lambda t, cfg: t[0])
TRANSPOSED = Layout(lambda a, cfg: (a.T,), lambda t, cfg: t[0].T)  # nn.Linear [out, in] ↔ TL [in, out]


def linear_heads(heads: str = "n_heads") -> Layout:
    """nn.Linear weight ``[heads*d_head, d_model]`` ↔ TL ``[heads, d_model, d_head]`` (``heads``: a cfg field)."""
    return Layout(lambda a, cfg: (heads_from_linear(a, cfg[heads]),), lambda t, cfg: heads_to_linear(t[0]))


def bias_heads(heads: str = "n_heads") -> Layout:
    """Bias ``[heads*d_head]`` ↔ TL ``[heads, d_head]``."""
    return Layout(lambda a, cfg: (a.reshape(cfg[heads], -1),), lambda t, cfg: t[0].reshape(-1))


# output projection: nn.Linear [d_model, n_heads*d_head] / Conv1D [n_heads*d_head, d_model] ↔ TL [n_heads, d_head, d_model]
LINEAR_OUT = Layout(lambda a, cfg: (a.T.reshape(cfg["n_heads"], -1, cfg["d_model"]),),
                    lambda t, cfg: t[0].reshape(-1, cfg["d_model"]).T)
CONV1D_OUT = Layout(lambda a, cfg: (a.reshape(cfg["n_heads"], -1, cfg["d_model"]),),
                    lambda t, cfg: t[0].reshape(-1, cfg["d_model"]))


def scaled(factor: Callable[[dict], float]) -> Layout:
    """TL holds ``factor(cfg)`` times HF's array (Gemma's embedding)."""

    def to_tl(a, cfg):
        return (a * np.asarray(factor(cfg), dtype=a.dtype),)

    def to_hf(t, cfg):
        return t[0] / np.asarray(factor(cfg), dtype=t[0].dtype)

    return Layout(to_tl, to_hf)


def offset(value: float) -> Layout:
    """TL holds HF's array plus ``value`` (Gemma's RMSNorm scales by ``1 + w``)."""
    return Layout(lambda a, cfg: (a + value,), lambda t, cfg: t[0] - value)


Missing = Literal["error", "skip", "zeros"]


@dataclass(frozen=True)
class Param:
    """One HF parameter and the TL weight(s) it holds.

    ``missing``: what an absent HF parameter means: "skip" (norm weights after fold_ln: TL has none
    either; writing skips the row when its first TL name is absent), "zeros" (a bias HF lacks: TL has
    zeros, shaped by the sibling ``.weight``'s rows), or "error".
    """

    hf: str
    tl: str | tuple[str, ...]
    layout: Layout = SAME
    missing: Missing = "error"

    @property
    def tl_names(self) -> tuple[str, ...]:
        return (self.tl,) if isinstance(self.tl, str) else self.tl


# A part of the weights that processing handles on its own (``ParamTable.read(..., part=)``): one
# block (its layer index), the embeddings, or the unembedding with the final norm; None is all of them.
Part = int | Literal["embed", "unembed"] | None
EMBED_PREFIXES = ("embed.", "pos_embed.")


def parts(cfg: dict) -> list[Part]:
    """Every part of a model's weights, in the order processing goes through them."""
    return ["embed", *range(cfg["n_layers"]), "unembed"]


def _row_part(row: Param) -> Literal["embed", "unembed"]:
    return "embed" if row.tl_names[0].startswith(EMBED_PREFIXES) else "unembed"


@dataclass(frozen=True)
class ParamTable:
    rows: tuple[Param, ...]

    def _expanded(self, cfg: dict, part: Part = None):
        for row in self.rows:
            if "{layer}" in row.hf:
                layers = range(cfg["n_layers"]) if part is None else [part] if isinstance(part, int) else []
            else:
                layers = [None] if part is None or part == _row_part(row) else []
            for layer in layers:
                fill = (lambda s: s.format(layer=layer)) if layer is not None else (lambda s: s)
                yield row, fill(row.hf), tuple(fill(n) for n in row.tl_names)

    def read(self, p: Params, cfg: dict, part: Part = None) -> TLWeights:
        """HF params → TL state dict (of one ``part`` only, when given)."""
        tl: TLWeights = {}
        for row, hf, names in self._expanded(cfg, part):
            if hf in p:
                array = p[hf]
            elif row.missing == "zeros":
                weight = p[hf.removesuffix(".bias") + ".weight"]
                array = np.zeros(weight.shape[0], dtype=weight.dtype)
            elif row.missing == "skip":
                continue
            else:
                raise BundleError(f"the model has no parameter {hf!r}")
            tl.update(zip(names, row.layout.to_tl(array, cfg)))
        return tl

    def write(self, tl: TLWeights, cfg: dict, part: Part = None) -> dict[str, np.ndarray]:
        """TL state dict → HF params (biases HF lacks included; the weight rewrite drops unused zeros)."""
        p: dict[str, np.ndarray] = {}
        for row, hf, names in self._expanded(cfg, part):
            if row.missing == "skip" and names[0] not in tl:
                continue
            p[hf] = row.layout.to_hf(tuple(tl[n] for n in names), cfg)
        return p


def norm_rows(hf_module: str, tl_prefix: str, bias: bool = True, layout: Layout = SAME) -> tuple[Param, ...]:
    """A norm's weight (and bias) rows, skipped once fold_ln removed them."""
    rows = (Param(f"{hf_module}.weight", f"{tl_prefix}.w", layout, missing="skip"),)
    return rows + ((Param(f"{hf_module}.bias", f"{tl_prefix}.b", missing="skip"),) if bias else ())


def unembed_rows(lm_head: str = "lm_head") -> tuple[Param, ...]:
    """The untied lm_head (the export always gives it a bias)."""
    return (Param(f"{lm_head}.weight", "unembed.W_U", TRANSPOSED), Param(f"{lm_head}.bias", "unembed.b_U"))


def separate_qkv_rows(attn: str, q: str, k: str, v: str, out: str, kv_heads: str = "n_heads",
                      biases: Missing = "zeros") -> tuple[Param, ...]:
    """Attention with one nn.Linear per q, k, v and the output (Llama, GPT-J, OPT)."""
    rows: tuple[Param, ...] = ()
    for name, proj, heads in (("Q", q, "n_heads"), ("K", k, kv_heads), ("V", v, kv_heads)):
        rows += (Param(f"{attn}.{proj}.weight", f"blocks.{{layer}}.attn.W_{name}", linear_heads(heads)),
                 Param(f"{attn}.{proj}.bias", f"blocks.{{layer}}.attn.b_{name}", bias_heads(heads), missing=biases))
    return rows + (Param(f"{attn}.{out}.weight", "blocks.{layer}.attn.W_O", LINEAR_OUT),
                   Param(f"{attn}.{out}.bias", "blocks.{layer}.attn.b_O", missing=biases))


def linear_mlp_rows(w_in: str, w_out: str, biases: Missing = "error") -> tuple[Param, ...]:
    """An MLP of two nn.Linear layers."""
    return (Param(f"{w_in}.weight", "blocks.{layer}.mlp.W_in", TRANSPOSED),
            Param(f"{w_in}.bias", "blocks.{layer}.mlp.b_in", missing=biases),
            Param(f"{w_out}.weight", "blocks.{layer}.mlp.W_out", TRANSPOSED),
            Param(f"{w_out}.bias", "blocks.{layer}.mlp.b_out", missing=biases))


# ---- fused projections ------------------------------------------------------------------------------
QKV = ("blocks.{layer}.attn.W_Q", "blocks.{layer}.attn.W_K", "blocks.{layer}.attn.W_V")
QKV_BIASES = ("blocks.{layer}.attn.b_Q", "blocks.{layer}.attn.b_K", "blocks.{layer}.attn.b_V")

# GPT-2's Conv1D c_attn: [d_model, 3*d_model], columns (q/k/v, head, d_head)
CONV1D_QKV = Layout(lambda a, cfg: tuple(split_heads(w, cfg["n_heads"]) for w in np.split(a, 3, axis=1)),
                    lambda t, cfg: np.concatenate([merge_heads(w) for w in t], axis=1))
CONV1D_QKV_BIAS = Layout(lambda a, cfg: tuple(b.reshape(cfg["n_heads"], -1) for b in np.split(a, 3)),
                         lambda t, cfg: np.concatenate([b.reshape(-1) for b in t]))


def _per_head_qkv(a: np.ndarray, cfg: dict) -> tuple[np.ndarray, ...]:
    w = a.reshape(cfg["n_heads"], 3, cfg["d_head"], cfg["d_model"])
    return tuple(w[:, i].transpose(0, 2, 1) for i in range(3))


# GPT-NeoX's query_key_value: nn.Linear rows ordered (head, q/k/v, d_head)
PER_HEAD_QKV = Layout(_per_head_qkv,
                      lambda t, cfg: np.stack([w.transpose(0, 2, 1) for w in t], axis=1).reshape(-1, cfg["d_model"]))
PER_HEAD_QKV_BIAS = Layout(lambda a, cfg: tuple(a.reshape(cfg["n_heads"], 3, -1)[:, i] for i in range(3)),
                           lambda t, cfg: np.stack(t, axis=1).reshape(-1))
