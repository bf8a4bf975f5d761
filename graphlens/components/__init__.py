"""TransformerLens' module tree over a loaded bundle: ``model.blocks[0].attn.W_Q``, ``model.embed``, ….

The components hold no weights of their own: every weight is a read-only view onto the arrays the
model's weight properties return (``model.blocks[2].attn.W_Q`` is ``model.W_Q[2]``), and every hook
point attribute is the model's own ``HookPoint`` (``model.blocks[0].attn.hook_pattern is
model.hook_dict["blocks.0.attn.hook_pattern"]``), so hooks added either way are the same hooks.
"""

from graphlens.components.modules import (
    Attention,
    Component,
    Embed,
    LayerNorm,
    MLP,
    ModulesMixin,
    PosEmbed,
    TransformerBlock,
    Unembed,
)

__all__ = ["Attention", "Component", "Embed", "LayerNorm", "MLP", "ModulesMixin", "PosEmbed", "TransformerBlock", "Unembed"]
