"""``pos_slice``, ``apply_slice_to_batch_dim``, short contexts, and call paths that must agree bit for bit.

TransformerLens' own tests compare ``model(x)`` with ``run_with_cache(x)[0]`` and ``stop_at_layer``
with the cached residual stream at atol 1e-8; graphlens' paths run the same graph nodes, so they are
compared for exact equality here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens.utils import Slice as TLSlice

from graphlens import HookedTransformer, Slice
from graphlens.export.pipeline import export_bundle
from tests.models import make_gpt2, tl_reference
from tests.test_architectures import FAMILIES
from tests.test_equivalence import assert_close
from tests.transformerlens.test_padding import left_padded


@pytest.fixture(scope="module")
def gpt2(small_bundle, small_hf):
    return HookedTransformer.from_pretrained(small_bundle), tl_reference(small_hf)


def _tokens(seed=0, shape=(4, 7)):
    return np.random.default_rng(seed).integers(1, 300, size=shape)


def _slices(value, wrapped: bool):
    """(graphlens argument, TransformerLens argument): each library's own Slice of ``value``, or ``value`` itself."""
    return (Slice(value), TLSlice(value)) if wrapped else (value, value)


@pytest.mark.parametrize("value,wrapped", [(1, False), (-1, False), ((1, 4), False), ([0, 2, 5], False),
                                           ((2, 6), True), (3, True)], ids=str)
def test_pos_slice_equals_transformer_lens(gpt2, value, wrapped):
    ours, ref = gpt2
    tokens = _tokens()
    pos_slice, ref_slice = _slices(value, wrapped)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens), pos_slice=ref_slice)
    _, cache = ours.run_with_cache(tokens, pos_slice=pos_slice)
    assert list(cache.keys()) == list(ref_cache.keys())
    for name in ref_cache.keys():
        assert_close(cache[name], ref_cache[name], name)
    if isinstance(value, int) and not wrapped:
        assert cache["embed"].shape == (4, 1, ours.cfg.d_model)  # a plain int keeps the position axis, as TL


@pytest.mark.parametrize("value,wrapped", [((1, 3), True), ((0, 4, 2), False), (2, False), (2, True), ([3, 0], False),
                                           ([3, 0], True)], ids=str)
def test_apply_slice_to_batch_dim_equals_transformer_lens(gpt2, value, wrapped):
    ours, ref = gpt2
    tokens = _tokens(1)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    _, cache = ours.run_with_cache(tokens)
    batch_slice, ref_slice = _slices(value, wrapped)
    ref_sliced = ref_cache.apply_slice_to_batch_dim(ref_slice)
    sliced = cache.apply_slice_to_batch_dim(batch_slice)
    assert sliced.has_batch_dim == ref_sliced.has_batch_dim
    assert list(sliced.keys()) == list(ref_sliced.keys())
    for name in ref_cache.keys():
        assert_close(sliced[name], ref_sliced[name], name)
    same = cache.apply_slice_to_batch_dim(None)  # identity (TL's own None mode trips its assertion)
    assert all(np.array_equal(same[name], cache[name]) for name in cache.keys())


def test_export_with_a_context_under_8(tmp_path):
    """TransformerLens' tests use n_ctx 5: export, every hook, and generation to the end of the context."""
    hf = make_gpt2(tmp_path / "hf", n_positions=5)
    ours = HookedTransformer.from_pretrained(export_bundle(str(hf), tmp_path / "bundle", progress=None))
    ref = tl_reference(hf)
    assert ours.cfg.n_ctx == 5
    tokens = _tokens(2, (2, 5))
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        ref_generated = ref.generate(torch.tensor(tokens[:, :3]), max_new_tokens=2, do_sample=False,
                                     stop_at_eos=False, verbose=False)
    logits, cache = ours.run_with_cache(tokens)
    for name in ref_cache.keys():
        assert_close(cache[name], ref_cache[name], name)
    assert_close(logits, ref_logits, "logits")
    generated = ours.generate(tokens[:, :3], max_new_tokens=2, do_sample=False, stop_at_eos=False, verbose=False)
    np.testing.assert_array_equal(generated, ref_generated.numpy())
    with pytest.raises(ValueError, match="n_ctx=5"):
        ours(_tokens(3, (1, 6)))


def _assert_paths_identical(ours: HookedTransformer, tokens: np.ndarray, **kwargs) -> None:
    logits, cache = ours.run_with_cache(tokens, **kwargs)
    np.testing.assert_array_equal(ours(tokens, **kwargs), logits, err_msg="model(x) vs run_with_cache(x)[0]")
    for layer in range(ours.cfg.n_layers + 1):
        name = f"blocks.{layer}.hook_resid_pre" if layer < ours.cfg.n_layers else f"blocks.{layer - 1}.hook_resid_post"
        np.testing.assert_array_equal(ours(tokens, stop_at_layer=layer, **kwargs), cache[name],
                                      err_msg=f"stop_at_layer={layer} vs {name}")
    _, one = ours.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post", **kwargs)
    np.testing.assert_array_equal(one["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"])
    mask = ours.padding_mask(tokens, padding_side=kwargs.get("padding_side"))  # from a residual: only a given mask
    np.testing.assert_array_equal(ours(cache["blocks.1.hook_resid_pre"], start_at_layer=1, attention_mask=mask), logits,
                                  err_msg="start_at_layer=1")


def test_call_paths_are_bit_identical_gpt2(gpt2):
    ours, _ = gpt2
    _assert_paths_identical(ours, _tokens(4))
    _assert_paths_identical(ours, left_padded(seed=4), padding_side="left")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_call_paths_are_bit_identical_every_family(family_bundle, family):
    ours = HookedTransformer.from_pretrained(family_bundle[family])
    _assert_paths_identical(ours, _tokens(5, (3, 9)))
    _assert_paths_identical(ours, left_padded(seed=5, pos=9), padding_side="left")
    # unprocessed norms keep their weights: the pattern ONNX Runtime's norm fusions would match
    _assert_paths_identical(HookedTransformer.from_pretrained_no_processing(family_bundle[family]), _tokens(6, (2, 7)))
