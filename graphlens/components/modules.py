"""The components of TransformerLens' ``HookedTransformer`` as numpy views onto a loaded bundle."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from jaxtyping import Float, Int

from graphlens.runtime.hook_points import HookPoint
from graphlens.runtime.weights import FinalNorm, ov_circuit, qk_circuit


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` that cannot be written (the memory stays the model's)."""
    view = array.view()
    view.flags.writeable = False
    return view


class Weight:
    """A component attribute reading the model's weight property ``attr`` (one layer's slice in a block)."""

    def __init__(self, attr: str, per_layer: bool = True):
        self.attr, self.per_layer = attr, per_layer

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, component, owner=None):
        if component is None:
            return self
        array = getattr(component.model, self.attr)
        if array is None:
            raise AttributeError(f"{component.prefix} has no {self.name} in this model")
        return read_only(array[component.layer] if self.per_layer else array)


class Component:
    """A named part of the model; its hook points (``hook_*``) are attributes, as in TransformerLens."""

    def __init__(self, model, prefix: str, layer: int | None = None):
        self.model, self.prefix, self.layer = model, prefix, layer

    def __getattr__(self, name: str):
        if name.startswith("hook_"):
            full = f"{self.prefix}.{name}" if self.prefix else name
            hook_dict = self.__dict__["model"].hook_dict
            if full in hook_dict:
                return hook_dict[full]
            raise AttributeError(f"{full} is not a hook of this model; see model.hook_names")
        raise AttributeError(f"{type(self).__name__} {self.__dict__.get('prefix')!r} has no attribute {name!r}")

    def hook_points(self) -> list[HookPoint]:
        """The hook points inside this component, in forward order."""
        start = f"{self.prefix}."
        return [self.model.hook_dict[n] for n in self.model.hook_names if n.startswith(start)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.prefix!r})"


class Embed(Component):
    W_E = Weight("W_E", per_layer=False)

    def __call__(self, tokens: Int[np.ndarray, "batch pos"]) -> Float[np.ndarray, "batch pos d_model"]:
        return self.W_E[np.asarray(tokens)]


class PosEmbed(Component):
    W_pos = Weight("W_pos", per_layer=False)


class Unembed(Component):
    W_U = Weight("W_U", per_layer=False)
    b_U = Weight("b_U", per_layer=False)

    def __call__(self, residual: Float[np.ndarray, "batch pos d_model"]) -> Float[np.ndarray, "batch pos d_vocab_out"]:
        return residual @ self.W_U + self.b_U


class LayerNorm(Component, FinalNorm):
    """``ln1``/``ln2``/``ln_final``: callable (TransformerLens' arithmetic); ``w``/``b`` are None once folded."""

    def __init__(self, model, prefix: str, layer: int | None = None):
        Component.__init__(self, model, prefix, layer)
        w, b = (model._tl_weights.get(f"{prefix}.{leaf}") for leaf in ("w", "b"))
        FinalNorm.__init__(self, model.cfg.normalization_type, model.cfg.eps,
                           None if w is None else read_only(w), None if b is None else read_only(b))


class Attention(Component):
    W_Q = Weight("W_Q")
    W_K = Weight("W_K")
    W_V = Weight("W_V")
    W_O = Weight("W_O")
    b_Q = Weight("b_Q")
    b_K = Weight("b_K")
    b_V = Weight("b_V")
    b_O = Weight("b_O")

    QK = property(lambda self: qk_circuit(self), doc="``W_Q @ W_K.T`` per head, ``[n_heads, d_model, d_model]``, factored.")
    OV = property(lambda self: ov_circuit(self), doc="``W_V @ W_O`` per head, ``[n_heads, d_model, d_model]``, factored.")


class MLP(Component):
    W_in = Weight("W_in")
    b_in = Weight("b_in")
    W_out = Weight("W_out")
    b_out = Weight("b_out")
    W_gate = Weight("W_gate")


class TransformerBlock(Component):
    """``model.blocks[i]``: ``ln1``, ``attn``, ``ln2``, ``mlp`` and the block's residual hooks."""

    def __init__(self, model, layer: int):
        super().__init__(model, f"blocks.{layer}", layer)
        self.ln1 = LayerNorm(model, f"{self.prefix}.ln1", layer)
        self.attn = Attention(model, f"{self.prefix}.attn", layer)
        if not model.cfg.attn_only:
            self.ln2 = LayerNorm(model, f"{self.prefix}.ln2", layer)
            self.mlp = MLP(model, f"{self.prefix}.mlp", layer)
        if model.cfg.use_normalization_before_and_after:  # Gemma 2's norms after attention and MLP
            self.ln1_post = LayerNorm(model, f"{self.prefix}.ln1_post", layer)
            self.ln2_post = LayerNorm(model, f"{self.prefix}.ln2_post", layer)


class ModulesMixin:
    """``model.embed``, ``pos_embed``, ``blocks``, ``ln_final``, ``unembed``, ``model.hook_embed``/``hook_pos_embed``."""

    @cached_property
    def embed(self) -> Embed:
        return Embed(self, "embed")

    @cached_property
    def pos_embed(self) -> PosEmbed:
        if self.cfg.positional_embedding_type not in ("standard", "shortformer"):
            raise AttributeError(f"pos_embed: this model has {self.cfg.positional_embedding_type} positional embeddings")
        return PosEmbed(self, "pos_embed")

    @cached_property
    def blocks(self) -> list[TransformerBlock]:
        return [TransformerBlock(self, layer) for layer in range(self.cfg.n_layers)]

    @cached_property
    def ln_final(self) -> LayerNorm:
        """The final norm: callable on ``[..., d_model]``, with ``hook_scale``/``hook_normalized``."""
        return LayerNorm(self, "ln_final")

    @cached_property
    def unembed(self) -> Unembed:
        return Unembed(self, "unembed")

    def _model_hook(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            raise AttributeError(f"this model has no {name} hook; see model.hook_names")
        return self.hook_dict[name]

    @property
    def hook_embed(self) -> HookPoint:
        return self._model_hook("hook_embed")

    @property
    def hook_pos_embed(self) -> HookPoint:
        return self._model_hook("hook_pos_embed")
