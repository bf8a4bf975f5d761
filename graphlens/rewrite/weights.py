"""TransformerLens' weight processing as a rewrite of ONNX initializers.

The adapter reads the HF-named initializers into a TransformerLens state dict; the processing below is
written once in TransformerLens' terms (fold_ln, center_writing_weights, center_unembed,
fold_value_biases, with its semantics and order); the adapter writes the result back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from graphlens.architectures.base import Architecture, Params, TLWeights
from graphlens.architectures.params import Part, parts
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


def _fold_into(W: np.ndarray, w: np.ndarray, axis: int, center: bool) -> None:
    """``W *= w`` along ``axis`` (d_model), then optionally centre over it; in place (one part at a time)."""
    shape = [1] * W.ndim
    shape[axis] = -1
    W *= w.reshape(shape)
    if center:
        W -= _mean(W, axis)


def fold_layer_norm(tl: TLWeights, cfg: dict, fold_biases: bool, center_weights: bool, layers: Iterable[int]) -> None:
    """Fold each norm's weight (and bias) into the weights that read from it, as TL's fold_layer_norm."""
    for layer in layers:
        b = f"blocks.{layer}"
        if f"{b}.ln1.w" in tl:
            w, bias = tl.pop(f"{b}.ln1.w"), tl.pop(f"{b}.ln1.b", None)
            for n in "QKV":
                W = tl[f"{b}.attn.W_{n}"]  # [heads, d_model, d_head]
                if fold_biases and bias is not None:
                    tl[f"{b}.attn.b_{n}"] = tl[f"{b}.attn.b_{n}"] + np.einsum("hmd,m->hd", W, bias)
                _fold_into(W, w, -2, center_weights)
        if f"{b}.ln2.w" in tl:
            w, bias = tl.pop(f"{b}.ln2.w"), tl.pop(f"{b}.ln2.b", None)
            W_in = tl[f"{b}.mlp.W_in"]  # [d_model, d_mlp]
            if fold_biases and bias is not None:
                tl[f"{b}.mlp.b_in"] = tl[f"{b}.mlp.b_in"] + bias @ W_in
            _fold_into(W_in, w, -2, center_weights)
            if f"{b}.mlp.W_gate" in tl:
                # TL has no b_gate and drops the bias's gate term; an adapter that maps one keeps it exact
                if fold_biases and bias is not None and f"{b}.mlp.b_gate" in tl:
                    tl[f"{b}.mlp.b_gate"] = tl[f"{b}.mlp.b_gate"] + bias @ tl[f"{b}.mlp.W_gate"]
                _fold_into(tl[f"{b}.mlp.W_gate"], w, -2, center_weights)
    if "ln_final.w" in tl:
        w, bias = tl.pop("ln_final.w"), tl.pop("ln_final.b", None)
        W_U = tl["unembed.W_U"]  # [d_model, d_vocab]
        if fold_biases and bias is not None:
            tl["unembed.b_U"] = tl["unembed.b_U"] + bias @ W_U
        _fold_into(W_U, w, -2, center_weights)


def center_writing_weights(tl: TLWeights, cfg: dict, layers: Iterable[int]) -> None:
    """Make every write into the residual stream mean-zero over d_model."""
    for name in ("embed.W_E", "pos_embed.W_pos"):
        if name in tl:
            tl[name] -= _mean(tl[name], -1)
    for layer in layers:
        b = f"blocks.{layer}"
        for W, bias in ((f"{b}.attn.W_O", f"{b}.attn.b_O"), (f"{b}.mlp.W_out", f"{b}.mlp.b_out")):
            tl[W] -= _mean(tl[W], -1)
            tl[bias] = tl[bias] - tl[bias].mean()


def center_unembed(tl: TLWeights, cfg: dict) -> None:
    """Logits are translation invariant: subtract the mean over the vocabulary."""
    if "unembed.W_U" in tl:
        tl["unembed.W_U"] -= _mean(tl["unembed.W_U"], -1)
        tl["unembed.b_U"] = tl["unembed.b_U"] - tl["unembed.b_U"].mean()


def fold_value_biases(tl: TLWeights, cfg: dict, layers: Iterable[int]) -> None:
    """Move b_V into b_O (the pattern sums to one, so b_V's contribution is constant)."""
    n_rep = cfg["n_heads"] // cfg.get("n_key_value_heads", cfg["n_heads"])
    for layer in layers:
        b = f"blocks.{layer}"
        b_V = np.repeat(tl[f"{b}.attn.b_V"], n_rep, axis=0)  # [n_heads, d_head]
        tl[f"{b}.attn.b_O"] = tl[f"{b}.attn.b_O"] + np.einsum("hd,hdm->m", b_V, tl[f"{b}.attn.W_O"])
        tl[f"{b}.attn.b_V"] = np.zeros_like(tl[f"{b}.attn.b_V"])


def refactor_factored_attn_matrices(tl: TLWeights, cfg: dict, layers: Iterable[int]) -> None:
    """TransformerLens' refactoring: W_Q/W_K (biases as an extra input row) made even by the SVD of W_QK,
    b_V folded into b_O, W_V = U·S and W_O = Vhᵀ from the SVD of W_OV. The model computes the same function."""
    from graphlens.analysis.factored_matrix import FactoredMatrix

    if cfg.get("positional_embedding_type") == "rotary":
        raise InputError("refactor_factored_attn_matrices needs absolute positions: with rotary embeddings W_QK "
                         "depends on the positions of query and key (TransformerLens refuses it too)")
    if cfg.get("n_key_value_heads") not in (None, cfg["n_heads"]):
        raise InputError("refactor_factored_attn_matrices is not defined for grouped-query attention")
    for layer in layers:
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


def processed_config(cfg: dict, processing: Processing) -> dict:
    """The config after ``processing`` (fold_ln turns LN/RMS into LNPre/RMSPre)."""
    cfg = dict(cfg)
    if processing.fold_ln and cfg["normalization_type"] in ("LN", "RMS"):
        cfg["normalization_type"] += "Pre"
    return cfg


def process(tl: TLWeights, cfg: dict, processing: Processing, part: Part = None) -> dict:
    """Apply ``processing`` to ``tl`` in place, in TransformerLens' order; returns the updated config.

    ``part``: ``tl`` holds only that part of the weights (``params.parts``); every step acts on each
    part separately, so processing part by part gives the same weights as processing all at once.
    """
    layers = range(cfg["n_layers"]) if part is None else [part] if isinstance(part, int) else []
    norm = cfg["normalization_type"]
    new_cfg = processed_config(cfg, processing)
    if processing.fold_ln and norm in ("LN", "RMS"):
        fold_layer_norm(tl, cfg, fold_biases=norm == "LN", center_weights=norm == "LN", layers=layers)
    if processing.center_writing_weights and new_cfg["normalization_type"] in ("LN", "LNPre"):
        center_writing_weights(tl, cfg, layers)
    # TransformerLens skips it under a logit soft-cap (tanh is not invariant to adding a constant)
    if processing.center_unembed and not cfg.get("output_logits_soft_cap", -1.0) > 0:
        center_unembed(tl, cfg)
    if processing.fold_value_biases:
        fold_value_biases(tl, cfg, layers)
    if processing.refactor_factored_attn_matrices:
        refactor_factored_attn_matrices(tl, cfg, layers)
    return new_cfg


def work_dtype(dtype: np.dtype) -> type:
    """The precision processing runs in: float32 (as TransformerLens), float64 for float64 weights."""
    return np.float64 if np.dtype(dtype).itemsize >= 8 else np.float32


class _Reads(Mapping):
    """``params`` as a mapping that records which names were read."""

    def __init__(self, params: Params):
        self.params, self.read = params, set()

    def __getitem__(self, name: str) -> np.ndarray:
        self.read.add(name)
        return self.params[name]

    def __contains__(self, name: object) -> bool:
        return name in self.params

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)


def process_stream(
    params: Params, arch: Architecture, cfg: dict, processing: Processing,
    emit: Callable[[str, np.ndarray], None], release: Callable[[str], None] | None = None,
) -> tuple[dict, set[str]]:
    """Process ``params`` (HF-named) part by part, calling ``emit(name, value)`` once per processed HF
    param, in its own dtype (biases HF lacks: the part's dtype; the value may be a non-contiguous view).
    Only one part is held at working precision (``work_dtype``) at a time, and processed in place;
    ``release(name)`` is called for each param once its part has been read (the source may go).

    Returns the config after processing and the names of the params processing removed (the norms
    fold_ln folds away).
    """
    new_cfg, removed = processed_config(cfg, processing), set()
    for part in parts(cfg):
        reads = _Reads(params)
        tl = arch.read_weights(reads, cfg, part=part)
        if not tl:
            continue
        dtype = np.dtype(next(iter(tl.values())).dtype)
        tl = {k: np.array(v, dtype=work_dtype(dtype)) for k, v in tl.items()}  # own copies: processed in place
        dtypes = {name: params[name].dtype for name in reads.read}
        for name in reads.read if release else ():
            release(name)
        new_cfg = process(tl, cfg, processing, part)
        written = arch.write_weights(tl, new_cfg, part=part)
        del tl
        removed |= reads.read - set(written)
        while written:
            name, value = written.popitem()
            emit(name, value.astype(dtypes.get(name, dtype), copy=False))
            del value
    return new_cfg, removed


def process_params(
    params: dict[str, np.ndarray], arch: Architecture, cfg: dict, processing: Processing
) -> tuple[dict[str, np.ndarray], dict]:
    """HF-named params → processed HF-named params (norm params folded away are absent) and new config."""
    out: dict[str, np.ndarray] = {}
    new_cfg, _ = process_stream(params, arch, cfg, processing, out.__setitem__)
    return out, new_cfg
