"""TransformerLens' weight processing as a rewrite of ONNX initializers.

The adapter reads the HF-named initializers into a TransformerLens state dict; the processing below is
written once in TransformerLens' terms (fold_ln, center_writing_weights, center_unembed,
fold_value_biases, with its semantics and order); the adapter writes the result back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from graphlens.architectures.base import Architecture, TLWeights


@dataclass(frozen=True)
class Processing:
    """Which of TransformerLens' weight processing steps a bundle has applied."""

    fold_ln: bool = True
    center_writing_weights: bool = True
    center_unembed: bool = True
    fold_value_biases: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


NO_PROCESSING = Processing(False, False, False, False)


def _mean(x: np.ndarray, axis: int) -> np.ndarray:
    return x.mean(axis=axis, keepdims=True)


def fold_layer_norm(tl: TLWeights, cfg: dict, fold_biases: bool, center_weights: bool) -> None:
    """Fold each norm's weight (and bias) into the weights that read from it, as TL's fold_layer_norm."""
    for layer in range(cfg["n_layers"]):
        b = f"blocks.{layer}"
        if f"{b}.ln1.w" in tl:
            w, bias = tl.pop(f"{b}.ln1.w"), tl.pop(f"{b}.ln1.b", None)
            for n in "QKV":
                W = tl[f"{b}.attn.W_{n}"]
                if fold_biases and bias is not None:
                    tl[f"{b}.attn.b_{n}"] = tl[f"{b}.attn.b_{n}"] + (W * bias[None, :, None]).sum(-2)
                W = W * w[None, :, None]
                tl[f"{b}.attn.W_{n}"] = W - _mean(W, -2) if center_weights else W
        if f"{b}.ln2.w" in tl:
            w, bias = tl.pop(f"{b}.ln2.w"), tl.pop(f"{b}.ln2.b", None)
            W_in = tl[f"{b}.mlp.W_in"]
            if fold_biases and bias is not None:
                tl[f"{b}.mlp.b_in"] = tl[f"{b}.mlp.b_in"] + (W_in * bias[:, None]).sum(-2)
            W_in = W_in * w[:, None]
            tl[f"{b}.mlp.W_in"] = W_in - _mean(W_in, -2) if center_weights else W_in
            if f"{b}.mlp.W_gate" in tl:
                W_gate = tl[f"{b}.mlp.W_gate"] * w[:, None]
                tl[f"{b}.mlp.W_gate"] = W_gate - _mean(W_gate, -2) if center_weights else W_gate
    if "ln_final.w" in tl:
        w, bias = tl.pop("ln_final.w"), tl.pop("ln_final.b", None)
        W_U = tl["unembed.W_U"]
        if fold_biases and bias is not None:
            tl["unembed.b_U"] = tl["unembed.b_U"] + (W_U * bias[:, None]).sum(-2)
        W_U = W_U * w[:, None]
        tl["unembed.W_U"] = W_U - _mean(W_U, -2) if center_weights else W_U


def center_writing_weights(tl: TLWeights, cfg: dict) -> None:
    """Make every write into the residual stream mean-zero over d_model."""
    tl["embed.W_E"] = tl["embed.W_E"] - _mean(tl["embed.W_E"], -1)
    if "pos_embed.W_pos" in tl:
        tl["pos_embed.W_pos"] = tl["pos_embed.W_pos"] - _mean(tl["pos_embed.W_pos"], -1)
    for layer in range(cfg["n_layers"]):
        b = f"blocks.{layer}"
        for W, bias in ((f"{b}.attn.W_O", f"{b}.attn.b_O"), (f"{b}.mlp.W_out", f"{b}.mlp.b_out")):
            tl[W] = tl[W] - _mean(tl[W], -1)
            tl[bias] = tl[bias] - tl[bias].mean()


def center_unembed(tl: TLWeights, cfg: dict) -> None:
    """Logits are translation invariant: subtract the mean over the vocabulary."""
    tl["unembed.W_U"] = tl["unembed.W_U"] - _mean(tl["unembed.W_U"], -1)
    tl["unembed.b_U"] = tl["unembed.b_U"] - tl["unembed.b_U"].mean()


def fold_value_biases(tl: TLWeights, cfg: dict) -> None:
    """Move b_V into b_O (the pattern sums to one, so b_V's contribution is constant)."""
    n_rep = cfg["n_heads"] // cfg.get("n_key_value_heads", cfg["n_heads"])
    for layer in range(cfg["n_layers"]):
        b = f"blocks.{layer}"
        b_V = np.repeat(tl[f"{b}.attn.b_V"], n_rep, axis=0)  # [n_heads, d_head]
        tl[f"{b}.attn.b_O"] = tl[f"{b}.attn.b_O"] + (b_V[:, :, None] * tl[f"{b}.attn.W_O"]).sum((0, 1))
        tl[f"{b}.attn.b_V"] = np.zeros_like(tl[f"{b}.attn.b_V"])


def process(tl: TLWeights, cfg: dict, processing: Processing) -> dict:
    """Apply ``processing`` to ``tl`` in place, in TransformerLens' order; returns the updated config."""
    cfg = dict(cfg)
    norm = cfg["normalization_type"]
    if processing.fold_ln and norm in ("LN", "RMS"):
        fold_layer_norm(tl, cfg, fold_biases=norm == "LN", center_weights=norm == "LN")
        cfg["normalization_type"] = norm + "Pre"
    if processing.center_writing_weights and cfg["normalization_type"] in ("LN", "LNPre"):
        center_writing_weights(tl, cfg)
    # TransformerLens skips it under a logit soft-cap (tanh is not invariant to adding a constant)
    if processing.center_unembed and not cfg.get("output_logits_soft_cap", -1.0) > 0:
        center_unembed(tl, cfg)
    if processing.fold_value_biases:
        fold_value_biases(tl, cfg)
    return cfg


def process_params(
    params: dict[str, np.ndarray], arch: Architecture, cfg: dict, processing: Processing
) -> tuple[dict[str, np.ndarray], dict]:
    """HF-named params → processed HF-named params (norm params folded away are absent) and new config."""
    read = arch.read_weights(params, cfg)
    dtype = next(iter(read.values())).dtype  # the weights' (params also holds the graph's int constants)
    tl = {k: v.astype(np.float64) for k, v in read.items()}
    new_cfg = process(tl, cfg, processing)
    written = arch.write_weights(tl, new_cfg)
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in written.items()}, new_cfg
