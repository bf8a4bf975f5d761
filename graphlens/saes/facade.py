"""SAELens' ``HookedSAETransformer`` methods on a loaded bundle: ``add_sae``, ``reset_saes``,
``run_with_saes``, ``run_with_cache_with_saes``, ``run_with_hooks_with_saes``, ``saes()``.

Attaching rewrites the loaded graphs (the model's and the decoder ``generate`` uses) with
``graphlens.saes.rewrite``, on top of the ``set_use_*`` sites; nothing is exported again. The rewritten
graph and its sessions are kept per set of attached SAEs, so running with the same SAEs again (as
``run_with_saes`` does on every call) reuses them; an SAE given as a folder is read once (again when its
files change). An SAELens ``SAE`` object is converted, and its graph rewritten, on every attach.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from graphlens.errors import InputError, UnknownHookError
from graphlens.facade.switches import SWITCHES
from graphlens.runtime.hook_points import HookPoint
from graphlens.saes.reader import CFG_FILE, WEIGHTS_FILE, SAEWeights, load_sae
from graphlens.saes.rewrite import sae_dims, with_saes
from graphlens.sites import SAE_DIMS, attached_base, forward_sorted

_KEPT_STATES = 4  # rewritten graphs (each with its sessions) kept per bundle graph
_SAE_WEIGHT = ".sae_"  # in the names of in-memory SAEs' weights (rewrite.add_sae's tag)


class SAEsMixin:
    """SAEs attached in memory, as SAELens' ``HookedSAETransformer``."""

    @property
    def _sae_state(self) -> dict[str, tuple[SAEWeights, bool]]:
        """Output site → (SAE, use_error_term), in the order they were added."""
        return self.__dict__.setdefault("_saes_attached", {})

    @property
    def acts_to_saes(self) -> dict[str, SAEWeights]:
        """The SAEs attached in memory, by the hook each reads (SAELens' keys)."""
        return {sae.hook_name: sae for sae, _ in self._sae_state.values()}

    def add_sae(self, sae, use_error_term: bool | None = None) -> None:
        """Attach ``sae`` (an SAELens folder, ``graphlens.saes.SAEWeights`` or SAELens ``SAE``) at its hook.

        ``use_error_term``: the model's output is unchanged (the SAE's error is added back, as
        ``hook_sae_error``); None: the SAELens object's own setting (False for a folder). An SAE already
        attached at the same hook is replaced.
        """
        weights = self._read_sae(sae)
        if use_error_term is None:
            use_error_term = bool(getattr(sae, "use_error_term", False))
        for hook in (weights.hook_name, weights.hook_name_out):
            if hook not in self.hook_dict:
                raise UnknownHookError(hook, self.hook_names)
        if attached_base(weights.hook_name_out) is None and weights.hook_name_out in self._baked_sae_sites():
            raise InputError(f"{self.bundle_dir} already has an SAE at {weights.hook_name_out} (attached on disk)")
        state = {site: v for site, v in self._sae_state.items() if v[0].hook_name != weights.hook_name}
        state[weights.hook_name_out] = (weights, bool(use_error_term))
        self._set_saes(state)

    def reset_saes(self, act_names: str | list[str] | None = None) -> None:
        """Detach the SAEs reading ``act_names`` (all attached in memory when None); SAEs attached on disk stay."""
        names = [act_names] if isinstance(act_names, str) else act_names
        if names is not None:
            unknown = [n for n in names if n not in self.acts_to_saes]
            if unknown:
                raise InputError(f"no SAE is attached at {', '.join(unknown)}; attached: {', '.join(self.acts_to_saes) or 'none'}")
        self._set_saes({site: v for site, v in self._sae_state.items() if names is not None and v[0].hook_name not in names})

    @contextmanager
    def saes(self, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None) -> Iterator["SAEsMixin"]:
        """SAEs attached inside the ``with`` block; at its end the SAEs attached before are back."""
        before = dict(self._sae_state)
        try:
            for sae in [saes] if not isinstance(saes, (list, tuple)) else saes:
                self.add_sae(sae, use_error_term=use_error_term)
            yield self
        finally:
            if reset_saes_end:
                self._set_saes(before)

    def run_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None,
                      **model_kwargs):
        """``forward`` with ``saes`` attached for this call."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self(*model_args, **model_kwargs)

    def run_with_cache_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, **kwargs):
        """``run_with_cache`` with ``saes`` attached for this call (the cache holds their hooks)."""
        with self.saes(saes, reset_saes_end, use_error_term):
            return self.run_with_cache(*model_args, **kwargs)

    def run_with_hooks_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True, fwd_hooks=(),
                                 **kwargs):
        """``run_with_hooks`` with ``saes`` attached for this call."""
        with self.saes(saes, reset_saes_end):
            return self.run_with_hooks(*model_args, fwd_hooks=fwd_hooks, **kwargs)

    # ---- the rewrite --------------------------------------------------------------------------------
    def _read_sae(self, sae) -> SAEWeights:
        """``load_sae(sae)``; a folder read before (same files, unchanged) gives the same object, so
        ``run_with_saes`` with a folder finds its rewritten graph and sessions again."""
        if not isinstance(sae, (str, os.PathLike)):
            return load_sae(sae)
        folder = Path(sae).resolve()
        try:
            stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in (folder / CFG_FILE, folder / WEIGHTS_FILE))
        except OSError:
            return load_sae(sae)  # raises the reader's error
        reads: OrderedDict = self.__dict__.setdefault("_sae_reads", OrderedDict())
        key = (str(folder), stamp)
        if key not in reads:
            reads[key] = load_sae(folder)
            while len(reads) > 2 * _KEPT_STATES:
                reads.popitem(last=False)
        reads.move_to_end(key)
        return reads[key]

    def _baked_sae_sites(self) -> set[str]:
        return {entry["hook_name_out"] for entry in self.manifest.get("saes") or []}

    def _set_saes(self, state: dict[str, tuple[SAEWeights, bool]]) -> None:
        before, dims_before = dict(self._sae_state), self.cfg.to_dict().get(SAE_DIMS)
        self.__dict__["_saes_attached"] = state
        self.cfg.sae_dims = {**(self.manifest["config"].get(SAE_DIMS) or {}),
                             **sae_dims({site: sae for site, (sae, _) in state.items()})}
        graphs = [g for g in (self.graph, self.__dict__.get("_decoder_graph")) if g is not None]
        try:
            for graph in graphs:
                self._use_sae_proto(graph)
        except Exception:
            self.__dict__["_saes_attached"] = before
            self.cfg.sae_dims = dims_before
            for graph in graphs:
                self._use_sae_proto(graph)
            raise
        self._sync_hook_points()

    def _set_switch(self, flag: str, on: bool) -> None:
        # the switch replaces the graphs itself: keep the sessions kept per SAE state out of its way
        graphs = [g for g in (self.graph, self.__dict__.get("_decoder_graph")) if g is not None]
        for graph in graphs:
            graph._sessions = OrderedDict()
        super()._set_switch(flag, on)
        if self._sae_state:  # the switched graph again, from the states kept (weights shared)
            for graph in graphs:
                self._use_sae_proto(graph)

    def _sae_key(self) -> tuple:
        switches = tuple(bool(getattr(self.cfg, flag)) for flag in SWITCHES)
        return switches, tuple((site, id(sae), err) for site, (sae, err) in self._sae_state.items())

    def _use_sae_proto(self, graph) -> None:
        """Run ``graph`` as the rewrite for the SAEs attached now, with the sessions kept for it."""
        states: OrderedDict = graph.__dict__.setdefault("_sae_states", OrderedDict())
        key = self._sae_key()
        if key not in states:
            proto = self._switched_proto(graph)
            graph.share_weights(proto)  # the SAE weights: once, for every session
            # the SAEs stay referenced while their state is kept: their ids (in the key) are not reused
            states[key] = (proto, OrderedDict(), tuple(self._sae_state.values()))
            while len(states) > _KEPT_STATES:
                states.popitem(last=False)
            self._drop_unused_weights(graph, states)
        states.move_to_end(key)
        proto, sessions, _ = states[key]
        graph._sessions = OrderedDict()  # replace_proto clears the sessions it holds: not the kept ones
        graph.replace_proto(proto)
        graph._sessions = sessions

    @staticmethod
    def _drop_unused_weights(graph, states: OrderedDict) -> None:
        """Forget the shared SAE weights that no kept state reads any more."""
        live = {i.name for proto, _, _ in states.values() for i in proto.graph.initializer}
        for name in [n for n in graph.weights if _SAE_WEIGHT in n and n not in live]:
            del graph.weights[name], graph._ort_weights[name]

    def _switched_proto(self, graph):
        proto = super()._switched_proto(graph)
        if not self._sae_state:
            return proto
        return with_saes(proto, self._sae_state, self.cfg.to_dict(), tags=True)[0]

    def _sync_hook_points(self) -> None:
        points = dict(self.hook_dict)
        super()._sync_hook_points()
        known = set(self.hook_names)
        attached = [n for n in self.graph.output_names if attached_base(n) is not None and n not in known]
        self.hook_names = forward_sorted(self.hook_names + attached)
        self.hook_dict = {n: self.hook_dict.get(n) or points.get(n) or HookPoint(n) for n in self.hook_names}
        self.mod_dict = self.hook_dict

    def _kv_decoder_graph(self):
        fresh = self.__dict__.get("_decoder_graph") is None
        graph = super()._kv_decoder_graph()
        if fresh and self._sae_state:
            self._use_sae_proto(graph)
        return graph
