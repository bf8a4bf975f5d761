"""``set_use_attn_result`` / ``set_use_hook_mlp_in`` in the other families (grouped-query attention, parallel
blocks, Gemma 2's post-norms, OPT), against TransformerLens 3.9 built by itself from the same HF folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import NO_PROCESSING
from tests.models import make_causal_lm, tl_reference_from_folder
from tests.test_architectures import FAMILIES
from tests.test_equivalence import assert_close

CHECKED = ("rms-gqa", "neox", "gptj", "gm2", "opt")


@pytest.fixture(scope="module", params=CHECKED)
def family(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"switches-{name}")
    folder = make_causal_lm(root / "hf", FAMILIES[name], seed=CHECKED.index(name))
    bundle = export_bundle(str(folder), root / "bundle", processing=NO_PROCESSING, progress=None, decoder=False)
    return name, HookedTransformer.from_pretrained(bundle), tl_reference_from_folder(folder, True)


def test_optional_hooks_equal_transformer_lens(family):
    name, ours, ref = family
    tokens = np.random.default_rng(0).integers(0, 300, size=(2, 9))
    expected_logits = ours(tokens)
    for model in (ours, ref):
        model.set_use_attn_result(True)
        model.set_use_hook_mlp_in(True)
    try:
        logits, cache = ours.run_with_cache(tokens)
        with torch.no_grad():
            ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        assert list(cache.keys()) == list(ref_cache.keys())
        for hook in ref_cache.keys():
            assert_close(cache[hook], ref_cache[hook], hook)
        assert_close(logits, ref_logits, "logits")
        np.testing.assert_allclose(logits, expected_logits, atol=1e-4)

        def ablate(result, hook):
            result[:, :, 0] = 0.0

        def halve(x, hook):
            return x * 0.5

        hooks = [("blocks.1.attn.hook_result", ablate), ("blocks.0.hook_mlp_in", halve)]
        with torch.no_grad():
            assert_close(ours.run_with_hooks(tokens, fwd_hooks=hooks),
                         ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=hooks), "hooked logits")
    finally:
        for model in (ours, ref):
            model.set_use_attn_result(False)
            model.set_use_hook_mlp_in(False)
