"""graphlens vs TransformerLens 3.9 on the same weights: every hook, logits and loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from tests.models import tl_reference

ATOL = RTOL = 1e-4


def assert_close(ours: np.ndarray, ref: torch.Tensor | np.ndarray, name: str = "") -> None:
    ref = ref.detach().cpu().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != TransformerLens {ref.shape}"
    finite = np.isfinite(ref)
    assert np.array_equal(finite, np.isfinite(ours)), f"{name}: -inf/nan positions differ"
    assert np.array_equal(ours[~finite], ref[~finite]), f"{name}: non-finite values differ"
    np.testing.assert_allclose(ours[finite], ref[finite], atol=ATOL, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("shape", ["small", "heads8"])
@pytest.mark.parametrize("processed", [True, False], ids=["default-processing", "no-processing"])
def test_every_hook_equals_transformer_lens(gpt2_bundles, hf_gpt2_dirs, shape, processed):
    ours = HookedTransformer.from_pretrained(gpt2_bundles[shape, processed], fold_ln=processed,
                                             center_writing_weights=processed, center_unembed=processed,
                                             fold_value_biases=processed)
    ref = tl_reference(hf_gpt2_dirs[shape], processing=processed)
    tokens = np.random.default_rng(1).integers(0, ours.cfg.d_vocab, size=(3, 11))
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        ref_loss = ref(torch.tensor(tokens), return_type="loss")
    logits, cache = ours.run_with_cache(tokens)
    assert list(cache.keys()) == list(ref_cache.keys())  # same names, same (forward) order
    for name in ref_cache.keys():
        assert_close(cache[name], ref_cache[name], name)
    assert_close(logits, ref_logits, "logits")
    assert_close(ours(tokens, return_type="loss"), ref_loss, "loss")
    per_token = ours(tokens, return_type="loss", loss_per_token=True)
    with torch.no_grad():
        assert_close(per_token, ref(torch.tensor(tokens), return_type="loss", loss_per_token=True), "per-token loss")
    both_logits, both_loss = ours(tokens, return_type="both")
    assert_close(both_logits, ref_logits, "both/logits")
    assert_close(both_loss, ref_loss, "both/loss")
    assert ours(tokens, return_type=None) is None


def test_config_matches_transformer_lens(small_bundle, small_hf):
    ours = HookedTransformer.from_pretrained(small_bundle)
    ref = tl_reference(small_hf)
    for field in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx",
                  "act_fn", "normalization_type", "positional_embedding_type", "eps", "default_prepend_bos",
                  "original_architecture"):
        assert getattr(ours.cfg, field) == getattr(ref.cfg, field), field
    assert ours.cfg.attn_scale == pytest.approx(float(ref.cfg.attn_scale))


def test_raw_bundle_processed_at_load_equals_processed_export(gpt2_bundles, hf_gpt2_dirs):
    """A bundle exported without processing, loaded with TransformerLens' defaults, is TL's default model."""
    ours = HookedTransformer.from_pretrained(gpt2_bundles["heads8", False])
    assert ours.cfg.normalization_type == "LNPre"
    ref = tl_reference(hf_gpt2_dirs["heads8"], processing=True)
    tokens = np.random.default_rng(2).integers(0, ours.cfg.d_vocab, size=(2, 9))
    logits, cache = ours.run_with_cache(tokens)
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    assert_close(logits, ref_logits, "logits")
    for name in ("hook_embed", "blocks.1.attn.hook_v", "blocks.2.hook_resid_post", "ln_final.hook_normalized"):
        assert_close(cache[name], ref_cache[name], name)


def test_strings_tokenize_as_transformer_lens(small_bundle, small_hf):
    ours = HookedTransformer.from_pretrained(small_bundle)
    ref = tl_reference(small_hf)
    prompts = ["Hello world", "When Mary and John went to the store, John gave"]
    for prepend_bos in (None, True, False):
        for side in ("right", "left"):
            np.testing.assert_array_equal(
                ours.to_tokens(prompts, prepend_bos=prepend_bos, padding_side=side),
                ref.to_tokens(prompts, prepend_bos=prepend_bos, padding_side=side).numpy(),
            )
    assert ours.to_str_tokens(prompts[1]) == ref.to_str_tokens(prompts[1])
    assert ours.to_str_tokens(prompts) == ref.to_str_tokens(prompts)
    tokens = ours.to_tokens(prompts[1])
    assert ours.to_string(tokens[0]) == ref.to_string(torch.tensor(tokens[0]))
    assert ours.to_string(tokens) == ref.to_string(torch.tensor(tokens))
    assert ours.to_single_token(" the") == ref.to_single_token(" the")
    with torch.no_grad():
        assert_close(ours(prompts[1]), ref(prompts[1]), "logits from a string")
        assert_close(ours(prompts, return_type="loss"), ref(prompts, return_type="loss"), "loss, padded batch")


def test_torch_tensors_and_lists_are_accepted(small_bundle):
    ours = HookedTransformer.from_pretrained(small_bundle)
    tokens = [[1, 2, 3, 4], [5, 6, 7, 8]]
    expected = ours(np.array(tokens))
    np.testing.assert_array_equal(ours(tokens), expected)
    np.testing.assert_array_equal(ours(torch.tensor(tokens)), expected)
    np.testing.assert_array_equal(ours(np.array(tokens[0]))[0], expected[0])  # 1-D → batch of one
