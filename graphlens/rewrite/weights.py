"""TransformerLens' weight processing as a rewrite of ONNX initializers.

The adapter reads the HF-named initializers into a TransformerLens state dict; the processing below is
written once in TransformerLens' terms (fold_ln, center_writing_weights, center_unembed,
fold_value_biases, with its semantics and order); the adapter writes the result back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from graphlens.architectures.base import Architecture, TLWeights
from graphlens.errors import InputError


@dataclass(frozen=True)
class Processing:
    """Which of TransformerLens' weight processing steps a bundle has applied."""

    fold_ln: bool = True
    center_writing_weights: bool = True
    center_unembed: bool = True
    fold_value_biases: bool = True
    # from_pretrained(refactor_factored_attn_matrices=True); in a manifest only when applied (format unchanged)
    refactor_factored_attn_matrices: bool = False

    def as_dict(self) -> dict:
        fields = asdict(self)
        if not self.refactor_factored_attn_matrices:
            del fields["refactor_factored_attn_matrices"]
        return fields


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


def refactor_factored_attn_matrices(tl: TLWeights, cfg: dict) -> None:
    """TransformerLens' refactoring: W_Q/W_K (biases as an extra input row) made even by the SVD of W_QK,
    b_V folded into b_O, W_V = U·S and W_O = Vhᵀ from the SVD of W_OV. The model computes the same function."""
    from graphlens.analysis.factored_matrix import FactoredMatrix

    if cfg.get("positional_embedding_type") == "rotary":
        raise InputError("refactor_factored_attn_matrices needs absolute positions: with rotary embeddings W_QK "
                         "depends on the positions of query and key (TransformerLens refuses it too)")
    if cfg.get("n_key_value_heads") not in (None, cfg["n_heads"]):
        raise InputError("refactor_factored_attn_matrices is not defined for grouped-query attention")
    for layer in range(cfg["n_layers"]):
        b = f"blocks.{layer}.attn"
        q_eff = np.concatenate([tl[f"{b}.W_Q"], tl[f"{b}.b_Q"][:, None, :]], axis=1)  # [h, d_model+1, d_head]
        k_eff = np.concatenate([tl[f"{b}.W_K"], tl[f"{b}.b_K"][:, None, :]], axis=1)
        q_even, k_even_t = FactoredMatrix(q_eff, np.swapaxes(k_eff, -1, -2)).make_even().pair
        k_even = np.swapaxes(k_even_t, -1, -2)
        tl[f"{b}.W_Q"], tl[f"{b}.b_Q"] = q_even[:, :-1], q_even[:, -1]
        tl[f"{b}.W_K"], tl[f"{b}.b_K"] = k_even[:, :-1], k_even[:, -1]
        W_V, W_O, b_V = tl[f"{b}.W_V"], tl[f"{b}.W_O"], tl[f"{b}.b_V"]
        tl[f"{b}.b_O"] = tl[f"{b}.b_O"] + (b_V[:, :, None] * W_O).sum((0, 1))
        tl[f"{b}.b_V"] = np.zeros_like(b_V)
        U, S, V = FactoredMatrix(W_V, W_O).svd()  # W_OV = U diag(S) Vᵀ
        tl[f"{b}.W_V"] = U * S[:, None, :]
        tl[f"{b}.W_O"] = np.swapaxes(V, -1, -2)


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
    if processing.refactor_factored_attn_matrices:
        refactor_factored_attn_matrices(tl, cfg)
    return cfg


def process_params(
    params: dict[str, np.ndarray], arch: Architecture, cfg: dict, processing: Processing
) -> tuple[dict[str, np.ndarray], dict]:
    """HF-named params → processed HF-named params (norm params folded away are absent) and new config."""
    dtype = next(iter(params.values())).dtype
    tl = {k: v.astype(np.float64) for k, v in arch.read_weights(params, cfg).items()}
    new_cfg = process(tl, cfg, processing)
    written = arch.write_weights(tl, new_cfg)
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in written.items()}, new_cfg
