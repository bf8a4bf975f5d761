"""``HookPoint``: one named site of the model, as TransformerLens' ``hook_points.HookPoint``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from graphlens.sites import split_name
from graphlens.errors import InputError, InputTypeError

# fn(activation: np.ndarray, hook: HookPoint) -> np.ndarray | None
HookFunction = Callable


@dataclass
class LensHandle:
    """A hook function added to a hook point (TransformerLens' ``LensHandle``, without torch)."""

    hook: HookFunction
    is_permanent: bool = False
    context_level: int | None = None


def _check_dir(dir: str, both: bool = False) -> None:
    allowed = ("fwd", "bwd", "both") if both else ("fwd", "bwd")
    if dir not in allowed:
        raise InputError(f"Invalid direction {dir!r}: use {' or '.join(repr(d) for d in allowed)}")


class HookPoint:
    """A hook site. ``model.hook_dict[name]`` holds one per hook of the bundle.

    Forward hooks live in ``fwd_hooks`` and run in order on the site's activation (a writable numpy
    array); backward hooks (``bwd_hooks``) are called with the gradient at the site when a run computes
    gradients (``graphlens.attribution``); ``ctx`` is a dict hooks may use to keep state, as in TransformerLens.
    """

    def __init__(self, name: str):
        self.name = name
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict = {}

    def add_hook(
        self,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Add ``hook`` (called as ``hook(activation, hook=self)``, or ``hook(gradient, hook=self)`` for
        ``dir="bwd"``); ``prepend`` puts it first."""
        _check_dir(dir)
        if not callable(hook):
            raise InputTypeError(f"a hook must be callable, got {type(hook).__name__} (for {self.name})")
        handle = LensHandle(hook, is_permanent, level)
        handles = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if prepend:
            handles.insert(0, handle)
        else:
            handles.append(handle)

    def add_perma_hook(self, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(
        self, dir: Literal["fwd", "bwd", "both"] = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove temporary hooks (of ``level`` only, when given); permanent ones too if asked."""
        _check_dir(dir, both=True)

        def kept(handles: list[LensHandle]) -> list[LensHandle]:
            return [h for h in handles
                    if not including_permanent and (h.is_permanent or (level is not None and h.context_level != level))]

        if dir in ("fwd", "both"):
            self.fwd_hooks = kept(self.fwd_hooks)
        if dir in ("bwd", "both"):
            self.bwd_hooks = kept(self.bwd_hooks)

    def has_hooks(
        self, dir: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = True, level: int | None = None
    ) -> bool:
        _check_dir(dir, both=True)
        handles = {"fwd": self.fwd_hooks, "bwd": self.bwd_hooks, "both": self.fwd_hooks + self.bwd_hooks}[dir]
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
            for h in handles
        )

    def clear_context(self) -> None:
        self.ctx = {}

    def layer(self) -> int:
        """The block index of this hook (TransformerLens raises for model-level hooks too)."""
        layer, _ = split_name(self.name)
        if layer is None:
            raise InputError(f"{self.name} is not inside a block")
        return layer

    def __repr__(self) -> str:
        counts = ", ".join(f"{len(h)} {d}" for d, h in (("fwd", self.fwd_hooks), ("bwd", self.bwd_hooks)) if h)
        return f"HookPoint({self.name!r}, {counts})" if counts else f"HookPoint({self.name!r})"
