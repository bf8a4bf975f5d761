"""TransformerLens' optional hooks in the other families (grouped-query attention, parallel blocks, rotary,
Gemma's norms, OPT), against TransformerLens 3.9 built by itself from the same HF folder. The bundles are
the session's (``conftest.family_bundle``), shared with the other parity tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from graphlens.errors import InputError
from tests.models import tl_reference_from_folder
from tests.test_architectures import FAMILIES
from tests.test_equivalence import assert_close
from tests.transformerlens.conftest import cache_equals_transformer_lens, set_flags

CHECKED = ("rms-gqa", "neox", "gptj", "gm2", "opt")


def _models(family_bundle, family_hf, name):
    return HookedTransformer.from_pretrained(family_bundle[name]), tl_reference_from_folder(family_hf[name])


@pytest.mark.parametrize("name", CHECKED)
def test_optional_hooks_equal_transformer_lens(family_bundle, family_hf, name):
    ours, ref = _models(family_bundle, family_hf, name)
    tokens = np.random.default_rng(0).integers(0, 300, size=(2, 9))
    expected_logits = ours(tokens)
    flags = ("use_attn_result", "use_hook_mlp_in")
    set_flags((ours, ref), flags, True)
    try:
        np.testing.assert_allclose(cache_equals_transformer_lens(ours, ref, tokens)[0], expected_logits, atol=1e-4)

        def ablate(result, hook):
            result[:, :, 0] = 0.0

        def halve(x, hook):
            return x * 0.5

        hooks = [("blocks.1.attn.hook_result", ablate), ("blocks.0.hook_mlp_in", halve)]
        with torch.no_grad():
            assert_close(ours.run_with_hooks(tokens, fwd_hooks=hooks),
                         ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=hooks), "hooked logits")
    finally:
        set_flags((ours, ref), flags, False)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_per_head_inputs_equal_transformer_lens(family_bundle, family_hf, name):
    """use_split_qkv_input (and use_attn_in where TransformerLens allows it: no grouped-query attention)."""
    ours, ref = _models(family_bundle, family_hf, name)
    tokens = np.random.default_rng(1).integers(0, 300, size=(2, 9))
    expected_logits = ours(tokens)
    grouped = ours.cfg.n_key_value_heads not in (None, ours.cfg.n_heads)
    flags = ("use_split_qkv_input",) if grouped else ("use_split_qkv_input", "use_attn_in")
    if grouped:
        with pytest.raises(InputError, match="grouped-query"):
            ours.set_use_attn_in(True)
    set_flags((ours, ref), flags, True)
    try:
        np.testing.assert_allclose(cache_equals_transformer_lens(ours, ref, tokens)[0], expected_logits, atol=1e-4)
        # one key/value head's input: only that head's keys change
        n_kv = ours.cfg.n_key_value_heads or ours.cfg.n_heads
        mask = np.zeros((1, 1, n_kv, 1), dtype=bool)
        mask[:, :, -1] = True
        replacement = np.random.default_rng(2).normal(size=(1, 1, 1, ours.cfg.d_model)).astype(np.float32)
        outputs = ["blocks.1.attn.hook_k", "blocks.1.attn.hook_q", "logits"]
        base = ours.run_graph(tokens, outputs)
        patched = ours.run_graph(tokens, outputs, {"blocks.1.hook_k_input.patch": replacement,
                                                   "blocks.1.hook_k_input.patch_mask": mask})
        np.testing.assert_array_equal(patched["blocks.1.attn.hook_k"][:, :, :-1], base["blocks.1.attn.hook_k"][:, :, :-1])
        np.testing.assert_array_equal(patched["blocks.1.attn.hook_q"], base["blocks.1.attn.hook_q"])

        def replace_last_head(x, hook):
            x[:, :, -1] = torch.as_tensor(replacement[0, 0, 0])

        with torch.no_grad():
            ref_logits = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[("blocks.1.hook_k_input", replace_last_head)])
        assert_close(patched["logits"], ref_logits, "logits after a hook_k_input patch")
    finally:
        set_flags((ours, ref), flags, False)
