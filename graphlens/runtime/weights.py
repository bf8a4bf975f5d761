"""TransformerLens' weight properties (``model.W_Q``, ``model.OV`` …), read from the bundle's ONNX initializers.

The architecture adapter maps the HF-named initializers to a TransformerLens state dict; the stacked
per-layer matrices are built from it on first use and cached. No torch involved.
"""

from __future__ import annotations

from functools import cached_property
from typing import Sequence, Union

import numpy as np
import onnx
from jaxtyping import Float
from onnx import numpy_helper

from graphlens.analysis.factored_matrix import FactoredMatrix
from graphlens.runtime.inputs import as_numpy
from graphlens.errors import InputError, InputTypeError

TokensLike = Union[str, int, np.integer, np.ndarray, Sequence[int]]
NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre")


def initializer_arrays(graph) -> dict[str, np.ndarray]:
    """Every initializer of a ``BundleGraph`` by name: shared weights plus the small ones kept in the proto."""
    params = dict(graph.weights)
    for init in graph.proto.graph.initializer:
        if init.name not in params and init.data_location != onnx.TensorProto.EXTERNAL:
            params[init.name] = numpy_helper.to_array(init)
    return params


def qk_circuit(weights) -> FactoredMatrix:
    """``W_Q @ W_K.T`` of anything with ``W_Q``/``W_K`` (a model: per layer and head; a block's attention: per head)."""
    return FactoredMatrix(weights.W_Q, np.swapaxes(weights.W_K, -2, -1))


def ov_circuit(weights) -> FactoredMatrix:
    """``W_V @ W_O`` of anything with ``W_V``/``W_O``, factored."""
    return FactoredMatrix(weights.W_V, weights.W_O)


class FinalNorm:
    """``model.ln_final`` as a numpy function (LN, LNPre, RMS, RMSPre), with TransformerLens' arithmetic."""

    def __init__(self, normalization_type: str | None, eps: float, w: np.ndarray | None, b: np.ndarray | None):
        self.normalization_type, self.eps, self.w, self.b = normalization_type, eps, w, b

    def __call__(self, x: Float[np.ndarray, "... d_model"]) -> Float[np.ndarray, "... d_model"]:
        kind = self.normalization_type
        if kind not in NORMALIZATION_TYPES:
            return x
        if kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdims=True)
        x = x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps)
        if self.w is not None and kind in ("LN", "RMS"):
            x = x * self.w
        if self.b is not None and kind == "LN":
            x = x + self.b
        return x


class WeightsMixin:
    """TransformerLens' weight properties for a model with ``graph``, ``architecture`` and ``cfg``."""

    @cached_property
    def _tl_weights(self) -> dict[str, np.ndarray]:
        params = initializer_arrays(self.graph)
        if self.manifest.get("quantization"):  # quantized weights read back as floats, under their HF names
            from graphlens.quantize.dequantise import dequantised

            params = dequantised(params, self.manifest["quantization"])
        return dict(self.architecture.read_weights(params, self.cfg.to_dict()))

    def state_dict(self) -> dict[str, np.ndarray]:
        """The TransformerLens state dict (parameters only, numpy), as the processed TL model holds it.

        Grouped-query attention keeps its n_key_value_heads under ``_W_K``/``_W_V``/``_b_K``/``_b_V``, as TL does.
        """
        grouped = self.cfg.n_key_value_heads not in (None, self.cfg.n_heads)
        renamed = {}
        for name, value in self._tl_weights.items():
            head, _, leaf = name.rpartition(".")
            if grouped and head.endswith(".attn") and leaf in ("W_K", "W_V", "b_K", "b_V"):
                name = f"{head}._{leaf}"
            renamed[name] = value
        return renamed

    def _stacked(self, suffix: str) -> np.ndarray:
        return np.stack([self._tl_weights[f"blocks.{layer}.{suffix}"] for layer in range(self.cfg.n_layers)])

    def _kv_heads(self, w: np.ndarray) -> np.ndarray:
        # grouped-query attention: TL's W_K/W_V/b_K/b_V properties repeat each kv head for its query heads
        n_kv = w.shape[1]
        return w if n_kv == self.cfg.n_heads else np.repeat(w, self.cfg.n_heads // n_kv, axis=1)

    @cached_property
    def W_E(self) -> Float[np.ndarray, "d_vocab d_model"]:
        return self._tl_weights["embed.W_E"]

    @cached_property
    def W_pos(self) -> Float[np.ndarray, "n_ctx d_model"]:
        if "pos_embed.W_pos" not in self._tl_weights:
            raise AttributeError(f"W_pos: this model has {self.cfg.positional_embedding_type} positional embeddings")
        return self._tl_weights["pos_embed.W_pos"]

    @property
    def W_E_pos(self) -> Float[np.ndarray, "d_vocab+n_ctx d_model"]:
        return np.concatenate([self.W_E, self.W_pos], axis=0)

    @cached_property
    def W_U(self) -> Float[np.ndarray, "d_model d_vocab_out"]:
        return self._tl_weights["unembed.W_U"]

    @cached_property
    def b_U(self) -> Float[np.ndarray, "d_vocab_out"]:
        if "unembed.b_U" in self._tl_weights:
            return self._tl_weights["unembed.b_U"]
        return np.zeros(self.cfg.d_vocab_out, dtype=self.W_U.dtype)

    @cached_property
    def W_Q(self) -> Float[np.ndarray, "n_layers n_heads d_model d_head"]:
        return self._stacked("attn.W_Q")

    @cached_property
    def W_K(self) -> Float[np.ndarray, "n_layers n_heads d_model d_head"]:
        return self._kv_heads(self._stacked("attn.W_K"))

    @cached_property
    def W_V(self) -> Float[np.ndarray, "n_layers n_heads d_model d_head"]:
        return self._kv_heads(self._stacked("attn.W_V"))

    @cached_property
    def W_O(self) -> Float[np.ndarray, "n_layers n_heads d_head d_model"]:
        return self._stacked("attn.W_O")

    @cached_property
    def b_Q(self) -> Float[np.ndarray, "n_layers n_heads d_head"]:
        return self._stacked("attn.b_Q")

    @cached_property
    def b_K(self) -> Float[np.ndarray, "n_layers n_heads d_head"]:
        return self._kv_heads(self._stacked("attn.b_K"))

    @cached_property
    def b_V(self) -> Float[np.ndarray, "n_layers n_heads d_head"]:
        return self._kv_heads(self._stacked("attn.b_V"))

    @cached_property
    def b_O(self) -> Float[np.ndarray, "n_layers d_model"]:
        return self._stacked("attn.b_O")

    @cached_property
    def W_in(self) -> Float[np.ndarray, "n_layers d_model d_mlp"]:
        return self._stacked("mlp.W_in")

    @cached_property
    def W_gate(self) -> Float[np.ndarray, "n_layers d_model d_mlp"] | None:
        return self._stacked("mlp.W_gate") if self.cfg.gated_mlp else None

    @cached_property
    def W_out(self) -> Float[np.ndarray, "n_layers d_mlp d_model"]:
        return self._stacked("mlp.W_out")

    @cached_property
    def b_in(self) -> Float[np.ndarray, "n_layers d_mlp"]:
        return self._stacked("mlp.b_in")

    @cached_property
    def b_out(self) -> Float[np.ndarray, "n_layers d_model"]:
        return self._stacked("mlp.b_out")

    QK = property(lambda self: qk_circuit(self), doc="``W_Q @ W_K.T`` per layer and head, factored.")
    OV = property(lambda self: ov_circuit(self), doc="``W_V @ W_O`` per layer and head, factored.")

    def check_layer(self, layer: int, allow_final: bool = True, what: str = "layer") -> int:
        """``layer`` as an int in [0, n_layers] (or n_layers-1 without ``allow_final``); clear error otherwise."""
        top = self.cfg.n_layers if allow_final else self.cfg.n_layers - 1
        if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool) or not 0 <= layer <= top:
            raise InputError(f"{what}={layer!r} is out of range: this model has n_layers={self.cfg.n_layers}, "
                             f"use 0..{top}" + (" (or -1/None for the final residual stream)" if allow_final else ""))
        return int(layer)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[np.ndarray, "d_model"]:
        """Sum of the attention (and MLP) output biases of layers before ``layer`` (plus its b_O if mlp_input)."""
        layer = self.check_layer(layer)
        bias = np.zeros(self.cfg.d_model, dtype=self.b_O.dtype)
        for i in range(layer):
            bias = bias + self.b_O[i]
            if include_mlp_biases and not self.cfg.attn_only:
                bias = bias + self.b_out[i]
        if mlp_input:
            if layer >= self.cfg.n_layers:
                raise InputError("mlp_input=True needs a layer below n_layers: there is no MLP after the last block")
            bias = bias + self.b_O[layer]
        return bias

    def tokens_to_residual_directions(
        self, tokens: TokensLike
    ) -> Float[np.ndarray, "d_model"] | Float[np.ndarray, "*tokens_shape d_model"]:
        """The unembedding vector(s) of token(s): a string, an id, or an array of ids (any shape)."""
        if isinstance(tokens, str):
            return self.W_U[:, self.to_single_token(tokens)]
        ids = as_numpy(tokens)
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputTypeError(f"tokens must be integer ids or a single-token string; got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.d_vocab_out):
            raise InputError(f"token ids out of range [0, {self.cfg.d_vocab_out})")
        if ids.size == 1:
            return self.W_U[:, int(ids.reshape(()))]
        return np.moveaxis(self.W_U[:, ids], 0, -1)

    def all_composition_scores(self, mode: str) -> Float[np.ndarray, "n_layers n_heads n_layers n_heads"]:
        """Q-, K- or V-composition score of every head pair; zero unless the right head is in a later layer."""
        from graphlens.analysis.composition import composition_scores

        rights = {"Q": lambda: self.QK, "K": lambda: self.QK.T, "V": lambda: self.OV}
        if mode not in rights:
            raise InputError(f"mode must be one of ['Q', 'K', 'V'] not {mode}")
        scores = composition_scores(self.OV, rights[mode](), broadcast_dims=True)
        layers = np.arange(self.cfg.n_layers)
        later = layers[:, None, None, None] < layers[None, None, :, None]
        return np.where(later, scores, np.zeros_like(scores))

    def all_head_labels(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]


__all__ = ["FinalNorm", "WeightsMixin", "initializer_arrays", "ov_circuit", "qk_circuit"]
