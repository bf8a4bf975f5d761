"""``Slice``: TransformerLens' index-or-slice helper (int, (start, stop[, step]), slice, list, array, None)."""

from __future__ import annotations

import numpy as np
from graphlens.errors import InputError


class Slice:
    """An index along one dimension. An int drops the dimension; everything else keeps it."""

    def __init__(self, input_slice=None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, np.ndarray)) or type(input_slice).__module__.startswith("torch"):
            self.slice, self.mode = np.asarray(input_slice, dtype=np.int64), "array"
        else:
            raise InputError(f"invalid slice {input_slice!r}: use an int, a tuple, a slice, a list or an array")

    def apply(self, array: np.ndarray, dim: int = 0) -> np.ndarray:
        index = [slice(None)] * array.ndim
        index[dim] = self.slice
        return array[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        if self.mode == "int":
            return np.array([self.slice])
        if max_ctx is None:
            raise InputError("indices of a slice need max_ctx")
        return np.arange(max_ctx)[self.slice]

    @staticmethod
    def unwrap(input_slice) -> "Slice":
        """A Slice from a Slice-like input; an int becomes ``[int]`` so the dimension stays (as TransformerLens)."""
        if isinstance(input_slice, Slice):
            return input_slice
        if isinstance(input_slice, (int, np.integer)):
            input_slice = [int(input_slice)]
        return Slice(input_slice)

    def __repr__(self) -> str:
        return f"Slice({self.slice!r}, mode={self.mode!r})"
