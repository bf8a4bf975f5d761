"""Attribution patching: the linear approximation of activation patching from one forward + backward.

For a site with clean activation ``a``, corrupted activation ``a'`` and metric gradient ``g = dM/da``
at the clean run, the attribution is ``(a' - a) · g``: what patching in the corrupted activation would
change the metric by, to first order. Reduced like the matching ``graphlens.patching.get_act_patch_*``
result: per head (``[n_layers, n_heads]``, summed over batch, positions and the head's vector) for sites
with a head axis, per position (``[n_layers, pos]``, summed over batch and the last axis) otherwise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jaxtyping import Float, Int

from graphlens.attribution.gradients import run_with_grads
from graphlens.errors import InputError
from graphlens.grad import grad_name
from graphlens.sites import KINDS

_HEAD_DIMS = ("n_heads", "n_key_value_heads")


def _site_names(model, kind: str) -> list[str]:
    if kind not in KINDS:
        raise InputError(f"unknown site kind {kind!r}; use a hook suffix such as 'attn.hook_z' or 'hook_resid_pre'")
    site = KINDS[kind]
    names = [site.name(layer) for layer in range(model.cfg.n_layers)] if site.per_layer else [site.name()]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise InputError(f"{model.bundle_dir} has no {missing[0]} hook")
    return names


def _reduce(kind: str, product: np.ndarray) -> np.ndarray:
    """Sum a ``[layers, *site shape]`` product to ``[layers, heads]`` or ``[layers, pos]``."""
    dims = KINDS[kind].dims
    keep = next((i for i, d in enumerate(dims) if d in _HEAD_DIMS), dims.index("pos") if "pos" in dims else None)
    axes = tuple(i + 1 for i in range(len(dims)) if i != keep)
    return product.sum(axis=axes)


def attr_patch(
    model,
    clean_tokens: Int[np.ndarray, "batch pos"],
    corrupted_tokens: Int[np.ndarray, "batch pos"],
    logits_grad: Float[np.ndarray, "batch pos d_vocab"] | None = None,
    sites: Sequence[str] = ("attn.hook_z", "hook_resid_pre"),
    reduce: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
    attention_mask: Int[np.ndarray, "batch pos"] | None = None,
) -> dict[str, Float[np.ndarray, "..."]]:
    """Site kind → attribution of patching the corrupted activation into the clean run, at every layer.

    ``logits_grad``: d metric / d logits at the clean run (``graphlens.attribution.logit_diff_grad``…;
    None: the mean loss). ``reduce=False``: the unreduced products ``[n_layers, *site shape]``.
    ``feeds``: substitution inputs applied to both runs (patched entries pass no gradient upstream).
    """
    if isinstance(sites, str):
        sites = [sites]
    clean = model.tokens_from(clean_tokens)
    corrupted = model.tokens_from(corrupted_tokens)
    if clean.shape != corrupted.shape:
        raise InputError(f"clean tokens {clean.shape} and corrupted tokens {corrupted.shape} must have the same shape")
    names = {kind: _site_names(model, kind) for kind in dict.fromkeys(sites)}
    hooks = [n for kind_names in names.values() for n in kind_names]
    corrupted_acts = model.run_graph(corrupted, hooks, feeds=feeds, attention_mask=attention_mask)
    clean_run = run_with_grads(model, clean, hooks, hooks, logits_grad, feeds=feeds, attention_mask=attention_mask)
    result = {}
    for kind, kind_names in names.items():
        product = np.stack([(corrupted_acts[n].astype(np.float64) - clean_run[n]) * clean_run[grad_name(n)]
                            for n in kind_names])
        result[kind] = (_reduce(kind, product) if reduce else product).astype(np.float32)
    return result
