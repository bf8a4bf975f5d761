"""Python hooks on a ``HookedTransformer``, with TransformerLens' API and semantics.

A hook is ``fn(activation, hook)``: ``activation`` is a writable numpy array, ``hook`` the site's
``HookPoint`` (``.name``, ``.layer()``, ``.ctx``). It returns a replacement array of the same shape
and dtype, or None (then in-place edits count). Hooks of one site run in the order they were added;
sites run in forward order. Runs with hooks execute the model once, cut at the hooked sites (see
``graphlens.rewrite.partition``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal, Sequence, Union

import numpy as np

from graphlens.runtime.hook_points import HookFunction, HookPoint
from graphlens.runtime.inputs import as_numpy
from graphlens.sites import EMBED_SITES, UnknownHookError, split_name
from graphlens.errors import HookResultError, InputError, InputTypeError

NameOrFilter = Union[str, Callable[[str], bool]]
HookList = Sequence[tuple[NameOrFilter, HookFunction]]

def blocks_run(n_layers: int, start_at_layer: int | None, stop_at_layer: int | None) -> range:
    """The blocks a forward with these bounds runs (Python slice semantics, as TransformerLens)."""
    return range(n_layers)[slice(start_at_layer, stop_at_layer)]


def site_runs(name: str, n_layers: int, start_at_layer: int | None, stop_at_layer: int | None) -> bool:
    """Whether a forward with these bounds computes site ``name`` (and so calls its hooks)."""
    layer, suffix = split_name(name)
    if layer is not None:
        return layer in blocks_run(n_layers, start_at_layer, stop_at_layer)
    if suffix in EMBED_SITES:
        return start_at_layer is None
    return stop_at_layer is None


class HooksMixin:
    """``add_hook``, ``hooks()``, ``run_with_hooks``, ``reset_hooks``… for a model with ``hook_dict``."""

    hook_dict: dict[str, HookPoint]
    hook_names: list[str]
    context_level: int = 0

    # ---- adding and removing -----------------------------------------------------------------------
    def _points_for(self, name: NameOrFilter) -> list[HookPoint]:
        if isinstance(name, str):
            if name not in self.hook_dict:
                raise UnknownHookError(name, self.hook_names)
            return [self.hook_dict[name]]
        if not callable(name):
            raise InputTypeError(f"a hook name must be a string or a filter function of names, not {type(name).__name__}")
        points = [self.hook_dict[n] for n in self.hook_names if name(n)]
        if not points:
            raise InputError(
                f"the filter {getattr(name, '__name__', name)!r} matches none of the model's {len(self.hook_names)} "
                "hook names; see model.hook_names"
            )
        return points

    def add_hook(
        self,
        name: NameOrFilter,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Add ``hook`` to the site ``name``, or to every site a filter function accepts."""
        for point in self._points_for(name):
            point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(self, name: NameOrFilter, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_hook(self, name: NameOrFilter, including_permanent: bool = False) -> None:
        """Remove the hooks of one site (or of the sites a filter accepts). Not in TransformerLens."""
        for point in self._points_for(name):
            point.remove_hooks("both", including_permanent=including_permanent)

    def remove_all_hook_fns(
        self, direction: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        for point in self.hook_dict.values():
            point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for point in self.hook_dict.values():
            point.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Literal["fwd", "bwd", "both"] = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove temporary hooks (permanent ones too with ``including_permanent``), clear contexts."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator["HooksMixin"]:
        """Hooks active inside the ``with`` block, removed at its end (unless ``reset_hooks_end=False``)."""
        self.context_level += 1
        try:
            for direction, hook_list in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
                for name, hook in hook_list:
                    for point in self._points_for(name):
                        point.add_hook(hook, dir=direction, level=self.context_level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=self.context_level)
            self.context_level -= 1

    def run_with_hooks(
        self,
        *model_args,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs,
    ):
        """``forward(*model_args, **model_kwargs)`` with ``fwd_hooks`` (``[(name or filter, fn), ...]``) added.

        ``bwd_hooks`` are called with the gradients of the metric the forward names (``return_type="loss"``
        or ``logits_grad=C``), last site first (see ``graphlens.attribution.mixin``)."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts) as model:
            return model.forward(*model_args, **model_kwargs)

    # ---- running ------------------------------------------------------------------------------------
    def hooked_sites(self, start_at_layer: int | None = None, stop_at_layer: int | None = None) -> list[str]:
        """Sites with forward hooks that a run with these bounds computes, in forward order."""
        n_layers = self.cfg.n_layers  # type: ignore[attr-defined]
        return [
            n
            for n in self.hook_names
            if self.hook_dict[n].fwd_hooks and site_runs(n, n_layers, start_at_layer, stop_at_layer)
        ]

    def call_hooks(self, site: str, activation: np.ndarray) -> np.ndarray:
        """Run the hooks of ``site`` on ``activation``; returns the site's value after them."""
        point = self.hook_dict[site]
        for handle in list(point.fwd_hooks):
            result = handle.hook(activation, hook=point)
            if result is not None:
                activation = _checked(result, activation, site, handle.hook)
        return activation


def _checked(result, activation: np.ndarray, site: str, fn) -> np.ndarray:
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", repr(fn))
    if not isinstance(result, np.ndarray):
        if type(result).__module__.startswith("torch"):
            result = as_numpy(result)
        else:
            raise HookResultError(
                f"hook {name} on {site} returned {type(result).__name__}; return a numpy array or None"
            )
    if result.shape != activation.shape:
        raise HookResultError(
            f"hook {name} on {site} returned shape {result.shape}, expected {activation.shape} (the activation's shape)"
        )
    if result.dtype != activation.dtype:
        raise HookResultError(
            f"hook {name} on {site} returned dtype {result.dtype}, expected {activation.dtype}; "
            f"use .astype(activation.dtype)"
        )
    return result
