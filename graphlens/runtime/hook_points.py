"""``HookPoint``: one named site of the model, as TransformerLens' ``hook_points.HookPoint``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from graphlens.sites import split_name
from graphlens.errors import InputError, InputTypeError, NotSupportedError

# fn(activation: np.ndarray, hook: HookPoint) -> np.ndarray | None
HookFunction = Callable


@dataclass
class LensHandle:
    """A hook function added to a hook point (TransformerLens' ``LensHandle``, without torch)."""

    hook: HookFunction
    is_permanent: bool = False
    context_level: int | None = None


def _no_backward(dir: str) -> None:
    if dir not in ("fwd", "bwd", "both"):
        raise InputError(f"Invalid direction {dir!r}: use 'fwd' (graphlens has no backward pass)")
    if dir == "bwd":
        raise NotSupportedError("graphlens runs inference only: backward hooks (dir='bwd') are not available")


class HookPoint:
    """A hook site. ``model.hook_dict[name]`` holds one per hook of the bundle.

    Forward hooks live in ``fwd_hooks`` and run in order on the site's activation (a writable numpy
    array); ``ctx`` is a dict hooks may use to keep state, as in TransformerLens.
    """

    def __init__(self, name: str):
        self.name = name
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []  # always empty: there is no backward pass
        self.ctx: dict = {}

    def add_hook(
        self,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Add ``hook`` (called as ``hook(activation, hook=self)``); ``prepend`` puts it first."""
        _no_backward(dir)
        if not callable(hook):
            raise InputTypeError(f"a hook must be callable, got {type(hook).__name__} (for {self.name})")
        handle = LensHandle(hook, is_permanent, level)
        if prepend:
            self.fwd_hooks.insert(0, handle)
        else:
            self.fwd_hooks.append(handle)

    def add_perma_hook(self, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(
        self, dir: Literal["fwd", "bwd", "both"] = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove temporary hooks (of ``level`` only, when given); permanent ones too if asked."""
        if dir not in ("fwd", "bwd", "both"):
            raise InputError(f"Invalid direction {dir!r}")
        self.fwd_hooks = [
            h
            for h in self.fwd_hooks
            if not including_permanent and (h.is_permanent or (level is not None and h.context_level != level))
        ]

    def has_hooks(
        self, dir: Literal["fwd", "bwd", "both"] = "both", including_permanent: bool = True, level: int | None = None
    ) -> bool:
        if dir == "bwd":
            return False
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
            for h in self.fwd_hooks
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
        return f"HookPoint({self.name!r}, {len(self.fwd_hooks)} fwd)" if self.fwd_hooks else f"HookPoint({self.name!r})"
