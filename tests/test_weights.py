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


def test_raw_bundle_processed_at_load_has_processed_weights(gpt2_bundles, hf_gpt2_dirs):
    ours = HookedTransformer.from_pretrained(gpt2_bundles["heads8", False])  # TL's default processing, at load
    ref = tl_reference(hf_gpt2_dirs["heads8"], processing=True)
    for name in NAMES:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name).detach().numpy(), atol=1e-5, rtol=1e-5,
                                   err_msg=name)


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


def test_composition_scores_and_head_labels(models):
    ours, ref = models
    for mode in "QKV":
        with torch.no_grad():
            expected = ref.all_composition_scores(mode).numpy()
        np.testing.assert_allclose(ours.all_composition_scores(mode), expected, atol=1e-5, err_msg=mode)
    assert ours.all_head_labels() == ref.all_head_labels()
    with pytest.raises(ValueError, match="mode must be one of"):
        ours.all_composition_scores("X")


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


# ---- a family with RMSNorm, grouped-query attention, a gated MLP and rotary positions --------------------
@pytest.fixture(scope="module")
def rms_gqa(tmp_path_factory):
    from transformers import LlamaConfig

    from graphlens.export.pipeline import export_bundle
    from graphlens.rewrite.weights import NO_PROCESSING
    from tests.models import make_causal_lm

    root = tmp_path_factory.mktemp("rms-gqa")  # no "llama" in the path: TL picks its config by name
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=300, max_position_embeddings=64)
    folder = make_causal_lm(root / "hf", config, seed=2)
    return folder, export_bundle(str(folder), root / "bundle", processing=NO_PROCESSING, progress=None, decoder=False)


@pytest.mark.parametrize("processed", [True, False], ids=["processed-at-load", "no-processing"])
def test_rms_gqa_family_weights_and_decompositions(rms_gqa, processed):
    from tests.models import tl_reference_from_folder

    folder, bundle = rms_gqa
    flags = dict(fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
                 fold_value_biases=processed)
    ours, ref = HookedTransformer.from_pretrained(bundle, **flags), tl_reference_from_folder(folder, processed)
    for name in "W_E W_U W_Q W_K W_V W_O W_in W_gate W_out b_Q b_K b_V b_O b_in b_out b_U".split():
        expected = getattr(ref, name).detach().numpy()
        assert getattr(ours, name).shape == expected.shape, name
        np.testing.assert_allclose(getattr(ours, name), expected, atol=1e-5, rtol=1e-5, err_msg=name)
    ref_sd = dict(ref.named_parameters())
    assert set(ours.state_dict()) == set(ref_sd)  # n_key_value_heads under _W_K/_W_V/_b_K/_b_V
    with pytest.raises(AttributeError, match="rotary"):
        ours.W_pos
    np.testing.assert_allclose(ours.OV.AB, ref.OV.AB.detach().numpy(), atol=1e-5)
    tokens = np.random.default_rng(0).integers(0, ours.cfg.d_vocab, size=(2, 6))
    _, cache = ours.run_with_cache(tokens)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        for method, kwargs in [
            ("accumulated_resid", dict(apply_ln=True, incl_mid=True)),
            ("accumulated_resid", dict(layer=1, apply_ln=True, mlp_input=True)),
            ("decompose_resid", dict(apply_ln=True, pos_slice=-1)),
            ("stack_head_results", dict(apply_ln=True, incl_remainder=True)),
            ("stack_neuron_results", dict(layer=2, apply_ln=True, neuron_slice=(0, 20))),
            ("get_full_resid_decomposition", dict(apply_ln=True, expand_neurons=False)),
        ]:
            got, labels = getattr(cache, method)(return_labels=True, **kwargs)
            expected, ref_labels = getattr(ref_cache, method)(return_labels=True, **kwargs)
            assert labels == ref_labels, method
            np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4, err_msg=f"{method} {kwargs}")
