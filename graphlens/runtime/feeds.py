"""Checking substitution feeds (``<hook>.patch``, ``.patch_mask``, ``.add``) before ONNX Runtime sees them."""

from __future__ import annotations

import numpy as np

from graphlens.errors import InputError, InputTypeError
from graphlens.export_names import PATCH_SUFFIXES
from graphlens.runtime.inputs import as_numpy
from graphlens.sites import SYMBOLIC_DIMS, UnknownHookError, site_dims


def feed_site(name, value, model) -> tuple[str, str, np.ndarray]:
    """``(hook, kind, array)`` for feed ``name``: a known hook, a known suffix, an input the bundle has, a
    numeric array (bool for ``patch_mask``) converted to the dtype the graph takes."""
    if not isinstance(name, str):
        raise InputTypeError(f"feed names are strings such as 'blocks.0.hook_resid_pre.add', not {type(name).__name__}")
    hook, _, kind = name.rpartition(".")
    if kind not in PATCH_SUFFIXES:
        raise InputError(f"feed {name!r} must end in .{', .'.join(PATCH_SUFFIXES)} (e.g. '{model.hook_names[0]}.add')")
    if hook not in model.hook_dict:
        raise UnknownHookError(hook, model.hook_names)
    if name not in model.graph.input_names:
        raise InputError(
            f"{model.bundle_dir} has no input {name!r}: the bundle was exported without substitution inputs at "
            f"this site; export again with `graphlens export ... --patch-sites all`"
        )
    array = as_numpy(value)
    if kind == "patch_mask":
        if array.dtype != bool and not (np.issubdtype(array.dtype, np.integer) and np.isin(array, (0, 1)).all()):
            raise InputTypeError(f"feed {name!r} must be a bool mask (True where the patch applies); got {array.dtype}")
        return hook, kind, array.astype(bool, copy=False)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputTypeError(f"feed {name!r} must hold numbers (it becomes {model.cfg.dtype}); got {array.dtype}")
    return hook, kind, array.astype(model.cfg.dtype, copy=False)


def checked_feed(name: str, value, tokens: np.ndarray, model) -> tuple[str, np.ndarray]:
    """``(hook, array)`` for feed ``name``; raises when the bundle lacks the input or the array cannot broadcast."""
    hook, _, array = feed_site(name, value, model)
    dims = site_dims(hook, model.cfg.to_dict())
    sizes = {"batch": tokens.shape[0], "pos": tokens.shape[1], "query_pos": tokens.shape[1], "key_pos": tokens.shape[1]}
    expected = tuple(sizes[d] if d in SYMBOLIC_DIMS else d for d in dims)
    if array.ndim != len(expected) or any(a not in (1, e) for a, e in zip(array.shape, expected)):
        raise InputError(
            f"feed {name!r} has shape {array.shape}, which does not broadcast to the activation's shape {expected} "
            f"({', '.join(map(str, dims))}); give {len(expected)} dims, each 1 or the activation's size"
        )
    return hook, array
