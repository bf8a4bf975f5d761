"""Activation patching, as TransformerLens' ``transformer_lens.patching``, in a few batched runs.

Same functions, signatures, index orders and result shapes as TransformerLens 3.9; results are numpy
(float32). Instead of one forward per index, the patched activations of many indices are stacked
along the batch axis (variants × the corrupted batch) and run together, from the patched site on:
the graph is cut once at every layer's site (``runtime.sweep.SiteSweep``), the corrupted input runs
through it once, and each batch of variants runs only the parts after its site, so nothing upstream
of it is recomputed and the sessions are built once per sweep. Runs are chunked to
``memory_budget_mb`` (measured: the first run of one variant says how many fit; see ``_Chunks``) or
``max_batch`` variants; ``patching_metric`` is still called once per
index, on that variant's logits ``[batch, pos, d_vocab]``.

``patch_setter(corrupted_activation, index, clean_activation)`` works on numpy arrays. Active hooks
of the model still run, on the batched activations.
"""

from __future__ import annotations

import contextlib
import itertools
from functools import partial
from typing import Callable, Literal, Sequence

import numpy as np
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from graphlens.runtime.inputs import as_numpy, check_tokens
from graphlens.runtime.graph import LOGITS
from graphlens.runtime.memory import PeakUse, estimated_run_bytes, rss_bytes, used_bytes
from graphlens.runtime.sweep import SiteSweep
from graphlens.sites import UnknownHookError, get_act_name
from graphlens.errors import InputError, NotCachedError

AxisNames = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
Metric = Callable[[Float[np.ndarray, "batch pos d_vocab"]], object]
PatchSetter = Callable[[np.ndarray, Sequence[int], np.ndarray], np.ndarray]

DEFAULT_MEMORY_BUDGET_MB = 1024


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]):
    """A pandas DataFrame of every index combination (last column fastest), as TransformerLens."""
    import pandas as pd

    return pd.DataFrame(list(itertools.product(*[range(r) for r in column_max_ranges])), columns=list(column_names))


def _index_rows(model, activation_name, n_pos, index_axis_names, index_df) -> tuple[list[list[int]], list[int] | None]:
    """The indices to patch, and the result's shape (None: flat, one entry per ``index_df`` row)."""
    if index_df is not None:
        if index_axis_names is not None:
            raise InputError("give index_axis_names or index_df, not both")
        rows = index_df.values.tolist() if hasattr(index_df, "values") else [list(r) for r in index_df]
        return [[int(i) for i in row] for row in rows], None
    if index_axis_names is None:
        raise InputError("give index_axis_names (e.g. ('layer', 'pos')) or index_df")
    heads = model.cfg.n_heads
    if activation_name in ("k", "v") and getattr(model.cfg, "n_key_value_heads", None) is not None:
        heads = model.cfg.n_key_value_heads
    ranges = {"layer": model.cfg.n_layers, "pos": n_pos, "src_pos": n_pos, "dest_pos": n_pos, "head_index": heads, "head": heads}
    unknown = [a for a in index_axis_names if a not in ranges]
    if unknown:
        raise InputError(f"unknown index axis names {unknown}; use {sorted(ranges)}")
    shape = [ranges[a] for a in index_axis_names]
    return [list(row) for row in itertools.product(*[range(n) for n in shape])], shape


def generic_activation_patch(
    model,
    corrupted_tokens: Int[np.ndarray, "batch pos"],
    clean_cache,
    patching_metric: Metric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisNames] | None = None,
    index_df=None,
    return_index_df: bool = False,
    max_batch: int | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    progress: bool = True,
):
    """Patch ``activation_name`` from ``clean_cache`` into the corrupted run at every index; metric per index.

    The first index is always the layer. Returns an array shaped by ``index_axis_names`` (or flat,
    one entry per row of ``index_df``), plus the index DataFrame with ``return_index_df``.
    ``max_batch`` / ``memory_budget_mb`` bound how many variants run together.
    """
    tokens = check_tokens(as_numpy(corrupted_tokens), model.cfg.d_vocab, model.cfg.n_ctx)
    rows, shape = _index_rows(model, activation_name, tokens.shape[-1], index_axis_names, index_df)
    chunks = _Chunks(model, tokens, max_batch, memory_budget_mb)
    sites = [get_act_name(activation_name, layer=row[0]) for row in rows]
    site_order = list(dict.fromkeys(sites))
    for site in site_order:
        _check_clean(model, clean_cache, site, tokens)
    mask = model.padding_mask(tokens)  # as TransformerLens' forward on the corrupted tokens
    sweep = SiteSweep(model, tokens, site_order, mask, arena=chunks.measured)  # measuring needs freed memory

    results = np.zeros(len(rows), dtype=np.float32)
    bar = tqdm(total=len(rows), disable=not progress, desc=f"patching {activation_name}", leave=False)
    for site in site_order:
        todo = [i for i, s in enumerate(sites) if s == site]
        clean, corrupted = as_numpy(clean_cache[site]), sweep.activation(site)
        if clean.shape != corrupted.shape:
            raise InputError(f"clean_cache[{site!r}] has shape {clean.shape}, the corrupted run's is {corrupted.shape}: "
                             f"run the clean input with the same batch size and length")
        while todo:
            chunk, todo = todo[:chunks.size], todo[chunks.size:]
            with chunks.run():
                patched = np.concatenate(
                    [np.asarray(patch_setter(corrupted.copy(), rows[i], clean)) for i in chunk]
                ).astype(corrupted.dtype, copy=False)
                logits = _run_patched(model, sweep, tokens, mask, site, patched, len(chunk))
                for v, i in enumerate(chunk):
                    results[i] = _scalar(patching_metric(logits[v * len(tokens):(v + 1) * len(tokens)]))
                del patched, logits
            bar.update(len(chunk))
    bar.close()
    output = results if shape is None else results.reshape(shape)
    if return_index_df:
        names = list(index_axis_names) if index_df is None else None
        return output, (index_df if index_df is not None else make_df_from_ranges(shape, names))
    return output


class _Chunks:
    """How many variants run together: ``max_batch`` when given; otherwise measured.

    The first run has one variant; the resident memory the sweep holds by then plus the peak that run
    added (both measured, ``runtime.memory``) say how many variants fit in ``memory_budget_mb``. Where
    memory cannot be measured, a shape-based estimate (``runtime.memory.estimated_run_bytes``) stands in.
    """

    def __init__(self, model, tokens: np.ndarray, max_batch, memory_budget_mb):
        if max_batch is not None:
            if not isinstance(max_batch, (int, np.integer)) or isinstance(max_batch, bool) or max_batch < 1:
                raise InputError(f"max_batch must be a positive integer (variants per run), got {max_batch!r}")
        if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float, np.integer, np.floating)) \
                or not np.isfinite(memory_budget_mb) or memory_budget_mb <= 0:
            raise InputError(f"memory_budget_mb must be a positive number of MB, got {memory_budget_mb!r}")
        self.budget_mb, self.start, self.start_rss = float(memory_budget_mb), used_bytes(), rss_bytes()
        self.size = int(max_batch) if max_batch is not None else 1
        self.measured = max_batch is not None
        if not self.measured and self.start is None:  # nothing to measure with: estimate from the shapes
            self.size = self._fitting(0, estimated_run_bytes(model.cfg, *tokens.shape))
            self.measured = True

    def _fitting(self, held: int, per_variant: int) -> int:
        fits = int((self.budget_mb * 2**20 - held) // max(per_variant, 1))
        if fits < 1:
            need = (held + per_variant) / 2**20
            raise InputError(f"memory_budget_mb={self.budget_mb:g} is below what one patched variant needs here "
                             f"(measured {need:.0f} MB for this model, batch and length); give at least {need:.0f}")
        return fits

    @contextlib.contextmanager
    def run(self):
        """Around one run of ``self.size`` variants; the first one measures."""
        if self.measured:
            yield
            return
        # what the sweep holds: heap in use, or resident memory when more (sessions map memory outside malloc)
        held = max(0, (used_bytes() or 0) - self.start, (rss_bytes() or 0) - (self.start_rss or 0))
        with PeakUse() as peak:
            yield
        self.size, self.measured = self._fitting(held, peak.added), True


def _check_clean(model, clean_cache, site: str, tokens: np.ndarray) -> None:
    """The clean activation exists and has the corrupted run's shape."""
    if site not in model.hook_dict:
        raise UnknownHookError(site, model.hook_names)
    if site not in clean_cache:
        raise NotCachedError(f"clean_cache has no {site}: run run_with_cache on the clean input without names_filter")
    clean = as_numpy(clean_cache[site])
    batch, pos = tokens.shape
    if clean.ndim < 2 or clean.shape[0] != batch or pos not in clean.shape[1:]:
        raise InputError(f"clean_cache[{site!r}] has shape {clean.shape}, which does not fit corrupted tokens of shape "
                         f"{tokens.shape}: clean and corrupted inputs need the same batch size and length")


def _scalar(value) -> float:
    try:
        return float(np.asarray(as_numpy(value)).reshape(()))
    except (TypeError, ValueError):
        raise InputError(f"patching_metric must return one number per call, got {type(value).__name__} "
                         f"{getattr(value, 'shape', '')}") from None


def _run_patched(model, sweep: SiteSweep, tokens: np.ndarray, mask: np.ndarray | None, site: str, patched: np.ndarray,
                 variants: int) -> np.ndarray:
    if patched.shape[0] != variants * tokens.shape[0]:
        raise InputError(f"patch_setter returned batch {patched.shape[0] // variants}, expected {tokens.shape[0]} (for {site})")
    if sweep.supports(site):
        return sweep.logits(site, patched, variants)
    # something without a batch axis crosses the cut: a graph cut at this site alone, fed every variant
    hooked = [s for s in model.hooked_sites() if s != site]
    tile = lambda a: np.tile(a, (variants, 1)) if a is not None else None  # noqa: E731
    return model.run_graph(tile(tokens), [LOGITS], given={site: patched}, hooked=hooked, attention_mask=tile(mask))[LOGITS]


# ---- patch setters: copy the clean activation into the corrupted one at ``index`` -------------------
def layer_pos_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, pos]; activations shaped [batch, pos, ...]."""
    _, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, pos, head]; activations shaped [batch, pos, head, ...]."""
    _, pos, head = index
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head]; activations shaped [batch, pos, head, ...]."""
    _, head = index
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head]; patterns shaped [batch, head, dest_pos, src_pos]."""
    _, head = index
    corrupted_activation[:, head, :, :] = clean_activation[:, head, :, :]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head, dest_pos]; patterns shaped [batch, head, dest_pos, src_pos]."""
    _, head, dest = index
    corrupted_activation[:, head, dest, :] = clean_activation[:, head, dest, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation, index, clean_activation):
    """index = [layer, head, dest_pos, src_pos]; patterns shaped [batch, head, dest_pos, src_pos]."""
    _, head, dest, src = index
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


def _patcher(activation_name: str, setter: PatchSetter, axes: tuple, doc: str):
    fn = partial(generic_activation_patch, patch_setter=setter, activation_name=activation_name, index_axis_names=axes)
    fn.__doc__ = f"Activation patching of {doc}; result shaped [{', '.join(axes)}]. See generic_activation_patch."
    return fn


get_act_patch_resid_pre = _patcher("resid_pre", layer_pos_patch_setter, ("layer", "pos"), "the residual stream before each block")
get_act_patch_resid_mid = _patcher("resid_mid", layer_pos_patch_setter, ("layer", "pos"), "the residual stream between attention and MLP")
get_act_patch_attn_out = _patcher("attn_out", layer_pos_patch_setter, ("layer", "pos"), "each attention layer's output")
get_act_patch_mlp_out = _patcher("mlp_out", layer_pos_patch_setter, ("layer", "pos"), "each MLP layer's output")

get_act_patch_attn_head_out_by_pos = _patcher("z", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"), "each head's output (by position)")
get_act_patch_attn_head_q_by_pos = _patcher("q", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"), "each head's queries (by position)")
get_act_patch_attn_head_k_by_pos = _patcher("k", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"), "each head's keys (by position)")
get_act_patch_attn_head_v_by_pos = _patcher("v", layer_pos_head_vector_patch_setter, ("layer", "pos", "head"), "each head's values (by position)")
get_act_patch_attn_head_pattern_by_pos = _patcher(
    "pattern", layer_head_pos_pattern_patch_setter, ("layer", "head_index", "dest_pos"), "each head's pattern (by destination)")
get_act_patch_attn_head_pattern_dest_src_pos = _patcher(
    "pattern", layer_head_dest_src_pos_pattern_patch_setter, ("layer", "head_index", "dest_pos", "src_pos"),
    "each (destination, source) entry of each head's pattern")

get_act_patch_attn_head_out_all_pos = _patcher("z", layer_head_vector_patch_setter, ("layer", "head"), "each head's output (all positions)")
get_act_patch_attn_head_q_all_pos = _patcher("q", layer_head_vector_patch_setter, ("layer", "head"), "each head's queries (all positions)")
get_act_patch_attn_head_k_all_pos = _patcher("k", layer_head_vector_patch_setter, ("layer", "head"), "each head's keys (all positions)")
get_act_patch_attn_head_v_all_pos = _patcher("v", layer_head_vector_patch_setter, ("layer", "head"), "each head's values (all positions)")
get_act_patch_attn_head_pattern_all_pos = _patcher(
    "pattern", layer_head_pattern_patch_setter, ("layer", "head_index"), "each head's pattern (all positions)")


def _pad_heads(result: np.ndarray, heads: int) -> np.ndarray:
    # keys/values of grouped-query models have fewer heads: pad to n_heads, as TransformerLens
    return np.pad(result, [(0, 0)] * (result.ndim - 1) + [(0, heads - result.shape[-1])])


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs) -> Float[np.ndarray, "5 layer head"]:
    """Every head, all positions, for output, q, k, v and pattern: shape [5, n_layers, n_heads]."""
    args = (model, corrupted_tokens, clean_cache, metric)
    out = get_act_patch_attn_head_out_all_pos(*args, **kwargs)
    return np.stack([
        out,
        get_act_patch_attn_head_q_all_pos(*args, **kwargs),
        _pad_heads(get_act_patch_attn_head_k_all_pos(*args, **kwargs), out.shape[-1]),
        _pad_heads(get_act_patch_attn_head_v_all_pos(*args, **kwargs), out.shape[-1]),
        get_act_patch_attn_head_pattern_all_pos(*args, **kwargs),
    ])


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs) -> Float[np.ndarray, "5 layer pos head"]:
    """Every head by position, for output, q, k, v and pattern: shape [5, n_layers, pos, n_heads]."""
    args = (model, corrupted_tokens, clean_cache, metric)
    out = get_act_patch_attn_head_out_by_pos(*args, **kwargs)
    return np.stack([
        out,
        get_act_patch_attn_head_q_by_pos(*args, **kwargs),
        _pad_heads(get_act_patch_attn_head_k_by_pos(*args, **kwargs), out.shape[-1]),
        _pad_heads(get_act_patch_attn_head_v_by_pos(*args, **kwargs), out.shape[-1]),
        get_act_patch_attn_head_pattern_by_pos(*args, **kwargs).transpose(0, 2, 1),
    ])


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric, **kwargs) -> Float[np.ndarray, "3 layer pos"]:
    """resid_pre, attn_out and mlp_out by position: shape [3, n_layers, pos]."""
    args = (model, corrupted_tokens, clean_cache, metric)
    return np.stack([
        get_act_patch_resid_pre(*args, **kwargs),
        get_act_patch_attn_out(*args, **kwargs),
        get_act_patch_mlp_out(*args, **kwargs),
    ])
