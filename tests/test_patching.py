"""graphlens.patching against transformer_lens.patching (TL 3.9) on the same weights and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformer_lens.patching as tl_patching

from graphlens import HookedTransformer, patching
from tests.models import tl_reference



@pytest.fixture(scope="module")
def setup(small_bundle, small_hf):
    torch.set_grad_enabled(False)
    ours, ref = HookedTransformer(small_bundle), tl_reference(small_hf)
    rng = np.random.default_rng(7)
    clean = rng.integers(0, ours.cfg.d_vocab, size=(2, 4))
    corrupted = clean.copy()
    corrupted[:, 1:] = rng.integers(0, ours.cfg.d_vocab, size=(2, 3))
    answer, wrong = 11, 42

    def metric(logits):  # numpy: logit difference at the last position, averaged over the batch
        return (logits[:, -1, answer] - logits[:, -1, wrong]).mean()

    def tl_metric(logits):
        return torch.tensor(metric(logits.numpy()))

    _, clean_cache = ours.run_with_cache(clean)
    _, ref_clean_cache = ref.run_with_cache(torch.tensor(clean))
    return dict(ours=(ours, corrupted, clean_cache, metric), ref=(ref, torch.tensor(corrupted), ref_clean_cache, tl_metric))


def compare(setup, name, **kwargs):
    ours = getattr(patching, name)(*setup["ours"], progress=False, **kwargs)
    ref = getattr(tl_patching, name)(*setup["ref"]).numpy()
    assert ours.shape == ref.shape, name
    # tiny random models move the metric only a little: compare at a fraction of the spread of results
    assert np.ptp(ref) > 1e-6, "the patches do not move the metric"
    np.testing.assert_allclose(ours, ref, atol=0.02 * np.ptp(ref) + 1e-7, rtol=0, err_msg=name)
    return ours


@pytest.mark.parametrize("name", [
    "get_act_patch_block_every",  # resid_pre, attn_out, mlp_out
    "get_act_patch_resid_mid",
    "get_act_patch_attn_head_all_pos_every",  # z, q, k, v, pattern over all positions
    "get_act_patch_attn_head_by_pos_every",  # z, q, k, v by position, pattern by destination
    "get_act_patch_attn_head_pattern_dest_src_pos",
])
def test_patching_equals_transformer_lens(setup, name):
    compare(setup, name)


def test_each_by_pos_and_all_pos_function_alone(setup):
    for name in ["get_act_patch_attn_head_q_by_pos", "get_act_patch_attn_head_v_all_pos", "get_act_patch_attn_head_pattern_all_pos"]:
        compare(setup, name)


def test_batched_runs_and_chunking(setup):
    ours = setup["ours"][0]
    n = ours.cfg.n_layers
    runs, cached = ours.graph.session_runs, len(ours.graph._sessions)
    full = patching.get_act_patch_resid_pre(*setup["ours"], progress=False)
    # the graph is cut once at every resid_pre: n + 1 parts run on the corrupted input, then the
    # variants patched at layer L (all 4 positions in one batch) run only the n - L parts after it;
    # the first run, which measures the memory of one variant, holds one of layer 0's positions
    assert ours.graph.session_runs - runs == (n + 1) + sum(n - layer for layer in range(n)) + n
    assert len(ours.graph._sessions) - cached <= 1  # one plan (one set of sessions) for the sweep
    runs = ours.graph.session_runs
    chunked = patching.get_act_patch_resid_pre(*setup["ours"], progress=False, max_batch=3)
    assert ours.graph.session_runs - runs == (n + 1) + 2 * sum(n - layer for layer in range(n))  # chunks of 3 + 1
    np.testing.assert_allclose(chunked, full, atol=1e-7, rtol=1e-5)


def test_cut_per_site_fallback_equals_the_sweep(setup, monkeypatch):
    # a graph whose cut carries a tensor without a batch axis is patched through a cut at the site alone
    swept = patching.get_act_patch_attn_head_out_all_pos(*setup["ours"], progress=False)
    monkeypatch.setattr(patching.SiteSweep, "supports", lambda self, site: False)
    per_site = patching.get_act_patch_attn_head_out_all_pos(*setup["ours"], progress=False)
    np.testing.assert_allclose(per_site, swept, atol=1e-5, rtol=1e-4)


def test_generic_patch_with_index_df(setup):
    import pandas as pd

    df = pd.DataFrame({"layer": [1, 0, 1], "pos": [3, 1, 1]})
    ours, ours_df = patching.generic_activation_patch(
        *setup["ours"], patch_setter=patching.layer_pos_patch_setter, activation_name="resid_post",
        index_df=df, return_index_df=True, progress=False)
    ref = tl_patching.generic_activation_patch(
        *setup["ref"], patch_setter=tl_patching.layer_pos_patch_setter, activation_name="resid_post", index_df=df)
    assert ours_df is df and ours.shape == (3,)
    np.testing.assert_allclose(ours, ref.numpy(), atol=0.02 * np.ptp(ref.numpy()) + 1e-7, rtol=0)


def test_patching_errors(setup):
    with pytest.raises(ValueError, match="index_axis_names"):
        patching.generic_activation_patch(*setup["ours"], patch_setter=patching.layer_pos_patch_setter,
                                          activation_name="resid_pre", progress=False)
    with pytest.raises(ValueError, match="unknown index axis"):
        patching.generic_activation_patch(*setup["ours"], patch_setter=patching.layer_pos_patch_setter,
                                          activation_name="resid_pre", index_axis_names=("layer", "position"))


def test_active_hooks_run_in_the_sweep_as_in_transformer_lens(setup):
    """A permanent hook elsewhere in the model runs upstream (corrupted run) and downstream (variants) of each cut."""
    ours, ref = setup["ours"][0], setup["ref"][0]
    site = "blocks.0.hook_mlp_out"
    ours.add_hook(site, lambda act, hook: act * 0.5)
    ref.add_hook(site, lambda act, hook: act * 0.5)
    try:
        hooked = compare(setup, "get_act_patch_resid_pre")
    finally:
        ours.reset_hooks(including_permanent=True)
        ref.reset_hooks(including_permanent=True)
    plain = compare(setup, "get_act_patch_resid_pre")
    assert not np.allclose(hooked, plain, atol=1e-6)  # the hook changed the results
