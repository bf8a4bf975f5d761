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
    runs = ours.graph.session_runs
    full = patching.get_act_patch_resid_pre(*setup["ours"], progress=False)
    assert ours.graph.session_runs - runs == 1 + ours.cfg.n_layers  # corrupted cache, then one run per layer
    runs = ours.graph.session_runs
    chunked = patching.get_act_patch_resid_pre(*setup["ours"], progress=False, max_batch=3)
    assert ours.graph.session_runs - runs == 1 + ours.cfg.n_layers * 2  # 4 positions in chunks of 3
    np.testing.assert_allclose(chunked, full, atol=1e-7, rtol=1e-5)


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
