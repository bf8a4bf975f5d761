"""``HookPoint``: one named site of the model, as TransformerLens' ``hook_points.HookPoint``."""

from __future__ import annotations

from graphlens.sites import split_name


class HookPoint:
    """A hook site. ``model.hook_dict[name]`` holds one per hook of the bundle."""

    def __init__(self, name: str):
        self.name = name

    def layer(self) -> int:
        """The block index of this hook (TransformerLens raises for model-level hooks too)."""
        layer, _ = split_name(self.name)
        if layer is None:
            raise ValueError(f"{self.name} is not inside a block")
        return layer

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"
