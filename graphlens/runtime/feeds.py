"""Checking substitution feeds (``<hook>.patch``, ``.patch_mask``, ``.add``) before ONNX Runtime sees them."""

from __future__ import annotations

import numpy as np

from graphlens.sites import SYMBOLIC_DIMS, UnknownHookError, concrete_shape, kind_of


def checked_feed(name: str, value, tokens: np.ndarray, model) -> tuple[str, np.ndarray]:
    """``(hook, array)`` for feed ``name``; raises when the bundle lacks the input or the array cannot broadcast."""
    hook, _, kind = name.rpartition(".")
    if hook not in model.hook_dict:
        raise UnknownHookError(hook, model.hook_names)
    if name not in model.graph.input_names:
        raise ValueError(
            f"{model.bundle_dir} has no input {name!r}: the bundle was exported without substitution inputs at "
            f"this site; export again with `graphlens export ... --patch-sites all`"
        )
    array = np.asarray(value, dtype=bool if kind == "patch_mask" else model.cfg.dtype)
    dims = concrete_shape(kind_of(hook).dims, model.cfg.to_dict())
    sizes = {"batch": tokens.shape[0], "pos": tokens.shape[1], "query_pos": tokens.shape[1], "key_pos": tokens.shape[1]}
    expected = tuple(sizes[d] if d in SYMBOLIC_DIMS else d for d in dims)
    if array.ndim != len(expected) or any(a not in (1, e) for a, e in zip(array.shape, expected)):
        raise ValueError(
            f"feed {name!r} has shape {array.shape}, which does not broadcast to the activation's shape {expected} "
            f"({', '.join(map(str, kind_of(hook).dims))}); give {len(expected)} dims, each 1 or the activation's size"
        )
    return hook, array
