"""TransformerLens 3.9's ``ActivationCache`` analysis methods, in numpy.

Residual-stream decompositions (``accumulated_resid``, ``decompose_resid``, ``stack_head_results``,
``stack_neuron_results``, ``get_full_resid_decomposition``), layer-norm scaling with the cached scales
(``apply_ln_to_stack``) and direct logit attribution (``logit_attrs``). Same arguments, defaults, labels
and position-slice handling as TransformerLens; weights come from the model's weight properties
(``model.W_O``, ``model.W_out`` …), which graphlens reads from the ONNX initializers.

The host class provides ``cache_dict``, ``model``, ``has_batch_dim``, ``has_embed``, ``has_pos_embed``,
``_resolve`` (TransformerLens key → hook name) and ``__getitem__``.
"""

from __future__ import annotations

import logging
from typing import Literal, Optional, Union

import numpy as np
from jaxtyping import Float, Int

from graphlens.runtime.inputs import as_numpy
from graphlens.sites import UnknownHookError
from graphlens.slicing import Slice
from graphlens.errors import InputError, InputIndexError, NotCachedError

SliceLike = Union[Slice, int, tuple, slice, list, np.ndarray, None]
Stack = Float[np.ndarray, "num_components *batch_and_pos_dims d_model"]
TokensLike = Union[str, int, Int[np.ndarray, "..."]]
LN_TYPES = ("LN", "LNPre", "RMS", "RMSPre")


def as_slice(s: SliceLike) -> Slice:
    """TransformerLens' ``Slice(x)`` (an int stays an int and drops the dimension)."""
    return Slice(s)


def slice_dim(s: Slice, x: np.ndarray, dim: int, what: str = "pos_slice") -> np.ndarray:
    """``s.apply(x, dim)``, with a clear error when an index does not fit the dimension."""
    size = x.shape[dim]
    if s.mode in ("int", "array"):
        idx = np.asarray(s.slice)
        if idx.size and (idx.max() >= size or idx.min() < -size):
            raise InputIndexError(f"{what}={s.slice!r} does not fit: the activation has {size} there (shape {x.shape})")
    return s.apply(x, dim=dim)


def _heads_first(x: np.ndarray) -> np.ndarray:
    """``... component d -> component ... d`` (TransformerLens' rearrange after concatenating components)."""
    return np.moveaxis(x, -2, 0)


def _token_shape(tokens: TokensLike) -> tuple[int, ...]:
    return () if isinstance(tokens, str) else as_numpy(tokens).shape


def _projection_2d(project) -> tuple[Optional[np.ndarray], bool]:
    if project is None:
        return None, False
    project = as_numpy(project)
    return (project[:, None], True) if project.ndim == 1 else (project, False)


class CacheAnalysisMixin:
    """Analysis methods of TransformerLens' ActivationCache (mixed into graphlens' ActivationCache)."""

    # ---- helpers ------------------------------------------------------------------------------------
    def _get(self, key) -> np.ndarray:
        """A cached activation; says whether a missing name is unknown or only not cached."""
        name = self._resolve(key)
        if name in self.cache_dict:
            return self.cache_dict[name]
        if self.model is not None and name in getattr(self.model, "hook_dict", {}):
            raise NotCachedError(f"{name} is a hook of the model but not in this cache: run run_with_cache without "
                                 f"names_filter, or include it there")
        raise UnknownHookError(name, self.cache_dict)

    def _final_layer(self, layer: Optional[int], allow_final: bool = True) -> int:
        n_layers = self.model.cfg.n_layers
        if layer is None or (isinstance(layer, (int, np.integer)) and layer == -1):
            return n_layers
        return self.model.check_layer(layer, allow_final=allow_final)

    # ---- residual stream --------------------------------------------------------------------------
    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream at the start of each layer up to ``layer`` (n_layers: after the last)."""
        pos_slice = as_slice(pos_slice)
        layer = self._final_layer(layer)
        n_layers = self.model.cfg.n_layers
        if mlp_input and layer == n_layers:
            raise InputError("mlp_input=True needs a layer below n_layers: there is no MLP after the last block")
        parts, labels = [], []
        for l in range(layer + 1):
            if l == n_layers:
                parts.append(self._get(("resid_post", n_layers - 1)))
                labels.append("final_post")
                continue
            parts.append(self._get(("resid_pre", l)))
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                parts.append(self._get(("resid_mid", l)))
                labels.append(f"{l}_mid")
        stack = np.stack([slice_dim(pos_slice, p, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack, layer, pos_slice=pos_slice, mlp_input=mlp_input, has_batch_dim=self.has_batch_dim,
                recompute_ln=layer == n_layers,
            )
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream at ``layer`` split into embeddings and each attention / MLP output."""
        if mode not in ("all", "mlp", "attn"):
            raise InputError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}")
        pos_slice = as_slice(pos_slice)
        layer = self._final_layer(layer)
        if mlp_input and layer == self.model.cfg.n_layers:
            raise InputError("mlp_input=True needs a layer below n_layers: there is no MLP after the last block")
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not self.model.cfg.attn_only
        parts, labels = [], []
        if incl_embeds:
            if self.has_embed:
                parts.append(self._get("hook_embed"))
                labels.append("embed")
            if self.has_pos_embed:
                parts.append(self._get("hook_pos_embed"))
                labels.append("pos_embed")
        for l in range(layer):
            if incl_attn:
                parts.append(self._get(("attn_out", l)))
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                parts.append(self._get(("mlp_out", l)))
                labels.append(f"{l}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self._get(("attn_out", layer)))
            labels.append(f"{layer}_attn_out")
        if not parts:
            raise InputError(f"decompose_resid(layer={layer}, mode={mode!r}, incl_embeds={incl_embeds}) has no components")
        stack = np.stack([slice_dim(pos_slice, p, -2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    # ---- attention heads --------------------------------------------------------------------------
    def compute_head_results(self) -> None:
        """Add ``blocks.L.attn.hook_result`` (each head's output, ``[..., head, d_model]``) from hook_z and W_O."""
        if self._has_head_results():
            logging.warning("Tried to compute head results when they were already cached")
            return
        self._ensure_head_results()

    def _has_head_results(self) -> bool:
        first = self.cache_dict.get("blocks.0.attn.hook_result")
        return first is not None and first.ndim >= 4

    def _ensure_head_results(self) -> None:
        if self._has_head_results():
            return
        W_O = self.model.W_O
        for layer in range(self.model.cfg.n_layers):
            self.cache_dict.pop(f"blocks.{layer}.attn.hook_result", None)  # stale (e.g. batchless) entries
        for layer in range(self.model.cfg.n_layers):
            z = self._get(("z", layer, "attn"))
            self.cache_dict[f"blocks.{layer}.attn.hook_result"] = np.einsum("...hd,hdm->...hm", z, W_O[layer])

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceLike = None,
        apply_ln: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """Each head's output in layers below ``layer``, labelled ``L{l}H{h}`` (plus an optional remainder)."""
        pos_slice = as_slice(pos_slice)
        layer = self._final_layer(layer)
        self._ensure_head_results()
        parts, labels = [], []
        for l in range(layer):
            parts.append(slice_dim(pos_slice, self._get(("result", l, "attn")), -3))
            labels += [f"L{l}H{h}" for h in range(self.model.cfg.n_heads)]
        if parts:
            stack = _heads_first(np.concatenate(parts, axis=-2))
            if incl_remainder:
                remainder = slice_dim(pos_slice, self._get(("resid_post", layer - 1)), -2) - stack.sum(0)
                stack = np.concatenate([stack, remainder[None]])
                labels.append("remainder")
        elif incl_remainder:
            stack = slice_dim(pos_slice, self._get(("resid_post", layer - 1)), -2)[None]
            labels.append("remainder")
        else:
            embed = slice_dim(pos_slice, self._get("hook_embed"), -2)
            stack = np.zeros((0, *embed.shape), dtype=embed.dtype)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: Optional[str] = None
    ) -> Float[np.ndarray, "layers_covered ..."]:
        """``activation_name`` of every layer below ``layer``, stacked on a new first axis."""
        layer = self._final_layer(layer)
        if layer == 0:
            raise InputError("stack_activation(layer=0) covers no layers; use a layer in 1..n_layers or -1")
        return np.stack([self._get((activation_name, l, sublayer_type)) for l in range(layer)])

    # ---- neurons ----------------------------------------------------------------------------------
    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: SliceLike = None,
        pos_slice: SliceLike = None,
        project_output_onto: Optional[np.ndarray] = None,
    ) -> Float[np.ndarray, "*batch_and_pos_dims neurons d_model"]:
        """Each neuron's output (activation × its W_out row) in ``layer``, optionally projected."""
        layer = self.model.check_layer(layer, allow_final=False)
        neuron_slice, pos_slice = as_slice(neuron_slice), as_slice(pos_slice)
        acts = slice_dim(pos_slice, self._get(("post", layer, "mlp")), -2)
        acts = slice_dim(neuron_slice, acts, -1, "neuron_slice")
        W_out = neuron_slice.apply(self.model.W_out[layer], dim=0)
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ as_numpy(project_output_onto)
        return acts * projected if projected.ndim == 1 else acts[..., None] * projected

    def _cached_ln_scale(
        self, layer: Optional[int], mlp_input: bool, pos_slice: Slice, batch_slice: Optional[Slice] = None
    ) -> np.ndarray:
        if layer is None or layer == self.model.cfg.n_layers:
            key = "ln_final.hook_scale"
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        scale = slice_dim(pos_slice, self._get(key), -2)
        if batch_slice is not None and self.has_batch_dim:
            scale = slice_dim(batch_slice, scale, 0, "batch_slice")
        return scale

    def _neuron_results_ln_projected(
        self, layer: int, pos_slice: Slice, neuron_slice: Slice, project: np.ndarray
    ) -> np.ndarray:
        # LN with the cached scale is linear: (a/s) * (W_out - mean(W_out)) @ p, without d_model-sized results
        scale = self._cached_ln_scale(layer, False, pos_slice)
        centre = self.model.cfg.normalization_type in ("LN", "LNPre")
        parts = []
        for l in range(layer):
            W_out = neuron_slice.apply(self.model.W_out[l], dim=0)
            form = W_out @ project
            if centre:
                form = form - W_out.mean(-1)[:, None] * project.sum(0)[None, :]
            acts = slice_dim(neuron_slice, slice_dim(pos_slice, self._get(("post", l, "mlp")), -2), -1, "neuron_slice")
            parts.append((acts / scale)[..., None] * form)
        if not parts:
            embed = slice_dim(pos_slice, self._get("hook_embed"), -2)
            return np.zeros((0, *embed.shape[:-1], project.shape[-1]), dtype=embed.dtype)
        return _heads_first(np.concatenate(parts, axis=-2))

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceLike = None,
        neuron_slice: SliceLike = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Optional[np.ndarray] = None,
    ) -> Stack | tuple[Stack, list[str]]:
        """Every neuron's output in layers below ``layer``, labelled ``L{l}N{n}`` (plus an optional remainder)."""
        layer = self._final_layer(layer)
        if isinstance(neuron_slice, (int, np.integer)):
            neuron_slice = [int(neuron_slice)]  # keep the neuron axis the stack concatenates over
        neuron_slice, pos_slice = as_slice(neuron_slice), as_slice(pos_slice)
        project, squeeze = _projection_2d(project_output_onto)
        neurons = slice_dim(neuron_slice, np.arange(self.model.cfg.d_mlp), 0, "neuron_slice")
        labels = [f"L{l}N{n}" for l in range(layer) for n in neurons]

        def resid_post() -> np.ndarray:
            return slice_dim(pos_slice, self._get(("resid_post", layer - 1)), -2)

        if apply_ln and project is not None:
            stack = self._neuron_results_ln_projected(layer, pos_slice, neuron_slice, project)
            if incl_remainder:
                remainder = self.apply_ln_to_stack(resid_post()[None], layer, pos_slice=pos_slice)[0] @ project
                if stack.shape[0]:
                    remainder = remainder - stack.sum(0)
                stack = np.concatenate([stack, remainder[None]])
                labels.append("remainder")
        else:
            parts = [
                self.get_neuron_results(l, pos_slice=pos_slice, neuron_slice=neuron_slice, project_output_onto=project)
                for l in range(layer)
            ]
            if parts:
                stack = _heads_first(np.concatenate(parts, axis=-2))
            else:
                embed = slice_dim(pos_slice, self._get("hook_embed"), -2)
                shape = embed.shape if project is None else (*embed.shape[:-1], project.shape[-1])
                stack = np.zeros((0, *shape), dtype=embed.dtype)
            if incl_remainder:
                remainder = resid_post() if project is None else resid_post() @ project
                stack = np.concatenate([stack, (remainder - stack.sum(0))[None]])
                labels.append("remainder")
            if apply_ln:
                stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        if squeeze:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack

    # ---- layer norm and logits ---------------------------------------------------------------------
    def apply_ln_to_stack(
        self,
        residual_stack: Stack,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Stack:
        """Scale each component as the norm before ``layer`` scales the whole stream (the cached scale).

        ``recompute_ln`` at the final layer applies ``ln_final`` to each component with its own statistics.
        """
        cfg = self.model.cfg
        if cfg.normalization_type not in LN_TYPES:
            return residual_stack
        residual_stack = as_numpy(residual_stack)
        pos_slice, batch_slice = as_slice(pos_slice), as_slice(batch_slice)
        layer = self._final_layer(layer)
        if has_batch_dim:
            residual_stack = slice_dim(batch_slice, residual_stack, 1, "batch_slice")
        if recompute_ln and layer == cfg.n_layers:
            return self.model.ln_final(residual_stack)
        if cfg.normalization_type in ("LN", "LNPre"):
            residual_stack = residual_stack - residual_stack.mean(-1, keepdims=True)
        scale = self._cached_ln_scale(layer, mlp_input, pos_slice, batch_slice)
        try:
            np.broadcast_shapes(residual_stack.shape[1:], scale.shape)
        except ValueError:
            raise InputError(
                f"residual_stack {residual_stack.shape} does not match the cached ln scale {scale.shape} "
                "(component, batch..., pos, d_model): pass the pos_slice/batch_slice the stack was built with"
            ) from None
        return residual_stack / scale

    def logit_attrs(
        self,
        residual_stack: Stack,
        tokens: TokensLike,
        incorrect_tokens: Optional[TokensLike] = None,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
    ) -> Float[np.ndarray, "num_components *batch_and_pos_dims_out"]:
        """Direct logit attribution: each component (ln-scaled) dotted with the unembedding of ``tokens``.

        With ``incorrect_tokens``, the logit difference ``tokens - incorrect_tokens``.
        """
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            shapes = [_token_shape(tokens), _token_shape(incorrect_tokens)]
            if shapes[0] != shapes[1]:
                raise InputError(
                    f"tokens and incorrect_tokens must have the same shape! "
                    f"(tokens.shape={shapes[0]}, incorrect_tokens.shape={shapes[1]})"
                )
            directions = directions - self.model.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack, layer=-1, pos_slice=pos_slice, batch_slice=batch_slice, has_batch_dim=has_batch_dim
        )
        try:
            np.broadcast_shapes(scaled.shape, directions.shape)
        except ValueError:
            raise InputError(
                f"tokens give directions of shape {directions.shape}, which do not broadcast against the "
                f"residual stack {scaled.shape}: pass one token, or tokens shaped like the stack's batch/pos dims"
            ) from None
        return (scaled * directions).sum(-1)

    # ---- everything ---------------------------------------------------------------------------------
    def get_full_resid_decomposition(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        return_labels: bool = False,
        project_output_onto: Optional[np.ndarray] = None,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream at ``layer`` as heads, neurons (or MLP outputs), embeddings and the biases."""
        layer = self._final_layer(layer)
        if mlp_input and layer == self.model.cfg.n_layers:
            raise InputError("mlp_input=True needs a layer below n_layers: there is no MLP after the last block")
        pos_slice = as_slice(pos_slice)
        project, squeeze = _projection_2d(project_output_onto)
        ln_folded = apply_ln and project is not None

        def finish(stack: np.ndarray) -> np.ndarray:
            # per component: ln (when folded into the projection) then projection
            if ln_folded:
                stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
            return stack @ project if project is not None else stack

        head_stack, labels = self.stack_head_results(layer + int(mlp_input), pos_slice=pos_slice, return_labels=True)
        head_stack = finish(head_stack)
        parts = [head_stack]
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                neuron_stack, neuron_labels = self.stack_neuron_results(
                    layer, pos_slice=pos_slice, return_labels=True, apply_ln=ln_folded, project_output_onto=project
                )
                parts.append(neuron_stack)
                labels += neuron_labels
            else:
                mlp_stack, mlp_labels = self.decompose_resid(
                    layer, mlp_input=mlp_input, pos_slice=pos_slice, incl_embeds=False, mode="mlp", return_labels=True
                )
                parts.append(finish(mlp_stack))
                labels += mlp_labels
        for name, present in (("embed", self.has_embed), ("pos_embed", self.has_pos_embed)):
            if present:
                parts.append(finish(slice_dim(pos_slice, self._get(name), -2)[None]))
                labels.append(name)
        bias = self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        if ln_folded:
            bias = finish(np.broadcast_to(bias, (1, *head_stack.shape[1:-1], self.model.cfg.d_model)))
        else:
            if project is not None:
                bias = bias @ project
            bias = np.broadcast_to(bias, (1, *head_stack.shape[1:]))
        parts.append(bias)
        labels.append("bias")
        stack = np.concatenate(parts)
        if apply_ln and not ln_folded:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice, mlp_input=mlp_input)
        if squeeze:
            stack = stack[..., 0]
        return (stack, labels) if return_labels else stack


__all__ = ["CacheAnalysisMixin", "as_slice", "slice_dim"]
