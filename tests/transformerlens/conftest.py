"""Fixtures for the TransformerLens-parity tests: one tiny random model per family, exported once."""

from __future__ import annotations

import pytest
import torch

from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import NO_PROCESSING
from tests.models import Lazy, make_causal_lm
from tests.test_architectures import FAMILIES, as_graphlens_shape
from tests.test_equivalence import assert_close


@pytest.fixture(scope="session")
def family_hf(tmp_path_factory):
    """family → HF folder (every family of tests/test_architectures.py; GPT-2 is the conftest's ``small_hf``)."""
    root = tmp_path_factory.mktemp("tl-families")
    seeds = {name: i for i, name in enumerate(FAMILIES)}
    return Lazy(lambda name: make_causal_lm(root / name, FAMILIES[name], seed=seeds[name]))


@pytest.fixture(scope="session")
def family_bundle(family_hf, tmp_path_factory):
    """family → bundle exported without processing and without a decoder (processing is applied at load)."""
    root = tmp_path_factory.mktemp("tl-family-bundles")
    return Lazy(lambda name: export_bundle(str(family_hf[name]), root / name, processing=NO_PROCESSING,
                                            decoder=False, progress=None))


def set_flags(models, flags, on: bool) -> None:
    """``model.set_<flag>(on)`` for every flag (TransformerLens' ``set_use_*`` switches) on every model."""
    for model in models:
        for flag in flags:
            getattr(model, f"set_{flag}")(on)


def cache_equals_transformer_lens(ours, ref, tokens):
    """``run_with_cache(tokens)`` of both models: the same hook names in the same order, every value and the
    logits equal (``assert_close``); returns graphlens' ``(logits, cache)``."""
    logits, cache = ours.run_with_cache(tokens)
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    assert list(cache.keys()) == list(ref_cache.keys())
    for name in ref_cache.keys():
        assert_close(cache[name], as_graphlens_shape(ref_cache[name], name, cache[name].shape), name)
    assert_close(logits, ref_logits, "logits")
    return logits, cache
