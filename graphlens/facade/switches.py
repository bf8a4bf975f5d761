"""``set_use_attn_result`` & co.: TransformerLens' optional hooks, added to the loaded graphs by a rewrite.

Setting a flag rewrites the model's graph (and the decoder graph ``generate`` and the KV cache use)
with ``graphlens.rewrite.extra_sites``; unsetting it restores the exported graph. The new sites are
hooks like any other: cached by ``run_with_cache``, hookable, patchable through their substitution inputs.
"""

from __future__ import annotations

from graphlens.errors import InputError
from graphlens.rewrite.extra_sites import with_extra_sites
from graphlens.runtime.hook_points import HookPoint
from graphlens.sites import forward_sorted, split_name

# config flag → the site kinds it adds in every block
SWITCHES = {
    "use_attn_result": ("attn.hook_result",),
    "use_hook_mlp_in": ("hook_mlp_in",),
    "use_split_qkv_input": ("hook_q_input", "hook_k_input", "hook_v_input"),
    "use_attn_in": ("hook_attn_in",),
}


class SwitchesMixin:
    """TransformerLens' ``set_use_*`` methods for HookedTransformer."""

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Expose each head's output ``blocks.L.attn.hook_result`` ``[batch, pos, n_heads, d_model]``."""
        self._set_switch("use_attn_result", use_attn_result)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Expose the MLP's input ``blocks.L.hook_mlp_in`` (patching it leaves the residual stream alone)."""
        if use_hook_mlp_in and self.cfg.attn_only:
            raise InputError("hook_mlp_in needs an MLP: this model is attention-only")
        self._set_switch("use_hook_mlp_in", use_hook_mlp_in)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Expose each head's query/key/value input ``blocks.L.hook_q_input`` ``[batch, pos, n_heads, d_model]``
        (``hook_k_input``/``hook_v_input``: n_key_value_heads); ln1 is then applied per head copy."""
        self._set_switch("use_split_qkv_input", use_split_qkv_input)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Expose each head's attention input ``blocks.L.hook_attn_in`` ``[batch, pos, n_heads, d_model]``."""
        if use_attn_in and self.cfg.n_key_value_heads not in (None, self.cfg.n_heads):
            raise InputError("attn_in is not defined for grouped-query attention (TransformerLens refuses it too); "
                             "use set_use_split_qkv_input")
        self._set_switch("use_attn_in", use_attn_in)

    def _set_switch(self, flag: str, on: bool) -> None:
        if not isinstance(on, bool):
            raise InputError(f"set_{flag} takes True or False, got {on!r}")
        if getattr(self.cfg, flag) == on:
            return
        setattr(self.cfg, flag, on)
        graphs = [g for g in (self.graph, self.__dict__.get("_decoder_graph")) if g is not None]
        try:
            protos = [self._switched_proto(graph) for graph in graphs]
        except Exception:
            setattr(self.cfg, flag, not on)  # nothing changed
            raise
        for graph, proto in zip(graphs, protos):
            graph.replace_proto(proto)
        self._sync_hook_points()

    def _switched_proto(self, graph):
        """The graph's exported proto with the sites of the flags that are on."""
        original = graph.__dict__.setdefault("_exported_proto", graph.proto)
        if not any(getattr(self.cfg, flag) for flag in SWITCHES):
            return original
        return with_extra_sites(original, self.cfg.to_dict(), self.architecture)

    def _sync_hook_points(self) -> None:
        """Hook names and points: the exported ones plus the switched-on sites (the same HookPoint objects kept)."""
        kinds = {kind for flag, added in SWITCHES.items() if getattr(self.cfg, flag) for kind in added}
        exported = [h["name"] for h in self.manifest["hooks"]]
        extra = [n for n in self.graph.output_names if split_name(n)[1] in kinds]
        self.hook_names = forward_sorted(exported + extra)
        self.hook_dict = {n: self.hook_dict.get(n) or HookPoint(n) for n in self.hook_names}
        self.mod_dict = self.hook_dict

    def _kv_decoder(self, batch: int):
        fresh = self.__dict__.get("_decoder_graph") is None
        decoder = super()._kv_decoder(batch)
        if fresh and any(getattr(self.cfg, flag) for flag in SWITCHES):
            self._decoder_graph.replace_proto(self._switched_proto(self._decoder_graph))
        return decoder
