"""How each harvested hook is laid out: its shape per sequence (from the site table), its token axis,
its ``[tokens, d]`` flattening, and its running statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from graphlens.sites import SYMBOLIC_DIMS, concrete_shape, kind_of

TOKEN_DIMS = ("pos", "query_pos")  # the axis that indexes a sequence's tokens


@dataclass(frozen=True)
class HookLayout:
    """One hook's activations for one sequence: ``shape`` (no batch axis), tokens along ``token_axis``."""

    name: str
    shape: tuple[int, ...]
    token_axis: int

    @property
    def d(self) -> int:
        """Numbers per token: the width of the flattened ``[tokens, d]`` view."""
        return int(np.prod(self.shape)) // self.shape[self.token_axis]

    def flat(self, acts: np.ndarray) -> Float[np.ndarray, "tokens d"]:
        """``[n_seq, *shape]`` → ``[n_seq * tokens, d]`` (token axis first, then the other axes in order)."""
        moved = np.moveaxis(acts, self.token_axis + 1, 1)
        return moved.reshape(-1, self.d)


def hook_layout(name: str, cfg: dict, context_size: int) -> HookLayout:
    dims = kind_of(name).dims[1:]  # drop batch
    shape = tuple(context_size if d in SYMBOLIC_DIMS else d for d in concrete_shape(dims, cfg))
    token_axis = next(i for i, d in enumerate(dims) if d in TOKEN_DIMS)
    return HookLayout(name, shape, token_axis)


@dataclass
class RunningStats:
    """Per-feature count, mean and sum of squared deviations (float64), and the largest token norm.

    Non-finite entries (the ``-inf`` of masked attention scores) are left out of every statistic.
    ``merge`` combines two (Chan et al.), so shards' statistics combine in order into the run's.
    """

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    max_norm: float = 0.0

    @classmethod
    def empty(cls, d: int) -> "RunningStats":
        return cls(np.zeros(d, np.int64), np.zeros(d), np.zeros(d))

    @classmethod
    def of(cls, flat: Float[np.ndarray, "tokens d"]) -> "RunningStats":
        values = flat.astype(np.float64)
        finite = np.isfinite(values)
        values = np.where(finite, values, 0.0)
        count = finite.sum(0)
        mean = values.sum(0) / np.maximum(count, 1)
        m2 = (np.where(finite, values - mean, 0.0) ** 2).sum(0)
        norm = float(np.sqrt((values ** 2).sum(1)).max()) if len(values) else 0.0
        return cls(count.astype(np.int64), mean, m2, norm)

    def merge(self, other: "RunningStats") -> "RunningStats":
        count = self.count + other.count
        safe = np.maximum(count, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / safe
        m2 = self.m2 + other.m2 + delta ** 2 * self.count * other.count / safe
        return RunningStats(count, mean, m2, max(self.max_norm, other.max_norm))

    def to_json(self) -> dict:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist(),
                "max_norm": self.max_norm}

    @classmethod
    def from_json(cls, data: dict) -> "RunningStats":
        return cls(np.asarray(data["count"], np.int64), np.asarray(data["mean"], np.float64),
                   np.asarray(data["m2"], np.float64), float(data["max_norm"]))

    def summary(self) -> dict:
        """The index's entry: mean and (population) variance per feature, the largest token norm."""
        counts = self.count.tolist()
        entry = {"tokens": int(self.count.max(initial=0)), "mean": self.mean.tolist(),
                 "variance": (self.m2 / np.maximum(self.count, 1)).tolist(), "max_norm": self.max_norm}
        if len(set(counts)) > 1:
            entry["count"] = counts  # per feature, where some entries were not finite
        return entry
