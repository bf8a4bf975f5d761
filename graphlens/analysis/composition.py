"""Composition scores between attention heads (TransformerLens' ``utils.composition_scores``), numpy."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

from graphlens.analysis.factored_matrix import FactoredMatrix
from graphlens.errors import InputError


def composition_scores(
    left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True
) -> Float[np.ndarray, "*leading_dims"]:
    """``‖L R‖ / (‖L‖ ‖R‖)`` (Frobenius) for each pair; with ``broadcast_dims``, every left × every right.

    Computed from the SVD-collapsed factors, so no full ``d_model × d_model`` product is formed.
    """
    if broadcast_dims:
        l_leading, r_leading = left.ndim - 2, right.ndim - 2
        for i in range(l_leading):
            right = right.unsqueeze(i)
        for i in range(r_leading):
            left = left.unsqueeze(i + l_leading)
    if left.rdim != right.ldim:
        raise InputError(f"composition scores need left.rdim == right.ldim; shapes were {left.shape} and {right.shape}")
    new_left, new_right = left.collapse_l(), right.collapse_r()
    norm = lambda m: np.linalg.norm(m, axis=(-2, -1))
    return norm(new_left @ new_right) / norm(new_right) / norm(new_left)


__all__ = ["composition_scores"]
