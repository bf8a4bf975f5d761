"""The module tree (``model.blocks[0].attn.W_Q``, ``model.blocks[0].attn.hook_pattern``, ``model.embed``, …)
against TransformerLens 3.9's modules on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from tests.models import tl_reference
from tests.test_equivalence import assert_close


@pytest.fixture(scope="module", params=[True, False], ids=["processed", "raw"])
def models(request, gpt2_bundles, hf_gpt2_dirs):
    processed = request.param
    flags = dict(fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
                 fold_value_biases=processed)
    ours = HookedTransformer.from_pretrained(gpt2_bundles["small", processed], **flags)
    return ours, tl_reference(hf_gpt2_dirs["small"], processing=processed)


def test_weights_are_read_only_views_of_the_weight_properties(models):
    ours, ref = models
    for layer in range(ours.cfg.n_layers):
        ours_block, ref_block = ours.blocks[layer], ref.blocks[layer]
        for module, names in (("attn", "W_Q W_K W_V W_O b_Q b_K b_V b_O"), ("mlp", "W_in b_in W_out b_out")):
            for name in names.split():
                value = getattr(getattr(ours_block, module), name)
                assert_close(value, getattr(getattr(ref_block, module), name), f"blocks.{layer}.{module}.{name}")
                stacked = getattr(ours, name)
                assert np.shares_memory(value, stacked), name  # a view, not a copy
                np.testing.assert_array_equal(value, stacked[layer])
                assert not value.flags.writeable
                with pytest.raises(ValueError):
                    value[...] = 0
    for ours_module, ref_module, name in ((ours.embed, ref.embed, "W_E"), (ours.pos_embed, ref.pos_embed, "W_pos"),
                                          (ours.unembed, ref.unembed, "W_U"), (ours.unembed, ref.unembed, "b_U")):
        assert_close(getattr(ours_module, name), getattr(ref_module, name), name)
        assert np.shares_memory(getattr(ours_module, name), getattr(ours, name))
    assert len(ours.blocks) == len(ref.blocks)
    np.testing.assert_allclose(ours.blocks[1].attn.OV.AB, ref.blocks[1].attn.OV.AB.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.blocks[0].attn.QK.AB, ref.blocks[0].attn.QK.AB.detach().numpy(), atol=1e-5)


def test_norm_weights_and_calls(models):
    ours, ref = models
    x = np.random.default_rng(0).normal(size=(2, 5, ours.cfg.d_model)).astype(np.float32)
    for ours_norm, ref_norm in ((ours.blocks[0].ln1, ref.blocks[0].ln1), (ours.blocks[1].ln2, ref.blocks[1].ln2),
                                (ours.ln_final, ref.ln_final)):
        with torch.no_grad():
            assert_close(ours_norm(x), ref_norm(torch.tensor(x)), repr(ours_norm))
        if hasattr(ref_norm, "w"):  # unfolded LayerNorm: TL keeps w and b
            assert_close(ours_norm.w, ref_norm.w, "w")
            assert_close(ours_norm.b, ref_norm.b, "b")
        else:
            assert ours_norm.w is None and ours_norm.b is None
    tokens = np.array([[1, 5, 9, 2]])
    with torch.no_grad():
        assert_close(ours.embed(tokens), ref.embed(torch.tensor(tokens)), "embed(tokens)")
        assert_close(ours.unembed(x), ref.unembed(torch.tensor(x)), "unembed(x)")


def test_hook_points_are_attributes(models):
    ours, ref = models
    assert ours.blocks[0].attn.hook_pattern is ours.hook_dict["blocks.0.attn.hook_pattern"]
    assert ours.hook_embed is ours.hook_dict["hook_embed"]
    assert ours.hook_pos_embed is ours.hook_dict["hook_pos_embed"]
    assert ours.blocks[1].hook_resid_post is ours.hook_dict["blocks.1.hook_resid_post"]
    assert ours.blocks[1].ln2.hook_scale is ours.hook_dict["blocks.1.ln2.hook_scale"]
    assert ours.blocks[0].mlp.hook_post is ours.hook_dict["blocks.0.mlp.hook_post"]
    assert ours.ln_final.hook_normalized is ours.hook_dict["ln_final.hook_normalized"]
    assert ours.unembed.hook_in is ours.hook_dict["unembed.hook_in"]
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor([[1, 2, 3]]))
    assert [h.name for h in ours.blocks[0].attn.hook_points()] == [n for n in ref_cache if n.startswith("blocks.0.attn.")]
    with pytest.raises(AttributeError, match="hook_result"):
        ours.blocks[0].attn.hook_result  # only with set_use_attn_result(True)

    tokens = np.random.default_rng(3).integers(0, ours.cfg.d_vocab, size=(2, 6))
    seen = {}

    def ablate_head(pattern, hook):
        seen[hook.name] = pattern.shape
        pattern[:, 1] = 0.0

    def scale_embed(embed, hook):
        return embed * 0.5

    ours.blocks[0].attn.hook_pattern.add_hook(ablate_head)
    ours.hook_embed.add_hook(scale_embed)
    try:
        logits = ours(tokens)
    finally:
        ours.reset_hooks()
    ref.blocks[0].attn.hook_pattern.add_hook(ablate_head)
    ref.hook_embed.add_hook(scale_embed)
    try:
        with torch.no_grad():
            ref_logits = ref(torch.tensor(tokens))
    finally:
        ref.reset_hooks()
    assert seen["blocks.0.attn.hook_pattern"] == (2, ours.cfg.n_heads, 6, 6)
    assert_close(logits, ref_logits, "logits with hooks added through the module tree")
    assert not ours.blocks[0].attn.hook_pattern.fwd_hooks  # reset_hooks removed them
