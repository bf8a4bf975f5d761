"""Weight properties read from the ONNX initializers vs TransformerLens 3.9's model (processed and raw)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import FactoredMatrix, HookedTransformer
from tests.models import tl_reference

NAMES = "W_E W_U W_pos W_E_pos W_Q W_K W_V W_O W_in W_out b_Q b_K b_V b_O b_in b_out b_U".split()
CASES = [("small", True), ("small", False), ("heads8", True), ("heads8", False)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{s}-{'processed' if p else 'raw'}" for s, p in CASES])
def models(request, gpt2_bundles, hf_gpt2_dirs):
    shape, processed = request.param
    flags = dict(fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
                 fold_value_biases=processed)
    return (HookedTransformer.from_pretrained(gpt2_bundles[shape, processed], **flags),
            tl_reference(hf_gpt2_dirs[shape], processing=processed))


def test_weights_equal_transformer_lens(models):
    ours, ref = models
    for name in NAMES:
        expected = getattr(ref, name).detach().numpy()
        got = getattr(ours, name)
        assert got.shape == expected.shape, f"{name}: {got.shape} != {expected.shape}"
        assert got.dtype == expected.dtype, name
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5, err_msg=name)
    assert ours.W_gate is None and ref.W_gate is None
    assert ours.W_Q is ours.W_Q  # computed once


def test_state_dict_has_transformer_lens_parameters(models):
    ours, ref = models
    ours_sd, ref_sd = ours.state_dict(), dict(ref.named_parameters())
    assert set(ours_sd) == set(ref_sd)
    for name, value in ref_sd.items():
        np.testing.assert_allclose(ours_sd[name], value.detach().numpy(), atol=1e-5, rtol=1e-5, err_msg=name)


def test_qk_ov_factored_matrices(models):
    ours, ref = models
    for name in ("QK", "OV"):
        fm, ref_fm = getattr(ours, name), getattr(ref, name)
        assert isinstance(fm, FactoredMatrix)
        assert fm.shape == tuple(ref_fm.shape)
        with torch.no_grad():
            np.testing.assert_allclose(fm.AB, ref_fm.AB.numpy(), atol=1e-5, err_msg=name)
            np.testing.assert_allclose(fm.S, ref_fm.S.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name}.S")
            np.testing.assert_allclose(fm.norm(), ref_fm.norm().numpy(), rtol=1e-4, err_msg=f"{name}.norm")
            np.testing.assert_allclose(fm[1, 2].get_corner(4), ref_fm[1, 2].get_corner(4).numpy(), atol=1e-5)
            # a full circuit: embeddings through one head's OV/QK into the unembedding
            full = ours.W_E @ fm[0, 1] @ ours.W_U if name == "OV" else ours.W_E @ fm[0, 1] @ ours.W_E.T
            ref_full = ref.W_E @ ref_fm[0, 1] @ (ref.W_U if name == "OV" else ref.W_E.T)
            np.testing.assert_allclose(full.AB, ref_full.AB.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{name} circuit")


def test_final_norm_matches_transformer_lens(models):
    ours, ref = models
    x = np.random.default_rng(0).standard_normal((2, 5, ours.cfg.d_model)).astype(np.float32)
    with torch.no_grad():
        expected = ref.ln_final(torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours.ln_final(x), expected, atol=1e-5, rtol=1e-5)


def test_weights_are_read_from_the_onnx_initializers(small_bundle):
    """Changing an initializer changes the property: nothing comes from anywhere else."""
    ours = HookedTransformer.from_pretrained(small_bundle)
    name = "transformer.h.1.mlp.c_proj.weight"
    changed = ours.graph.weights[name].copy()
    changed[3, 5] += 1.0
    ours.graph.weights[name] = changed
    fresh = HookedTransformer.from_pretrained(small_bundle)
    np.testing.assert_allclose(ours.W_out[1, 3, 5] - fresh.W_out[1, 3, 5], 1.0, rtol=1e-6)


def test_bad_token_directions(small_bundle):
    ours = HookedTransformer.from_pretrained(small_bundle)
    with pytest.raises(ValueError, match="out of range"):
        ours.tokens_to_residual_directions(np.array([1, ours.cfg.d_vocab]))
    with pytest.raises(TypeError, match="integer ids"):
        ours.tokens_to_residual_directions(np.array([1.5, 2.0]))
