"""Fixtures for the TransformerLens-parity tests: one tiny random model per family, exported once."""

from __future__ import annotations

import pytest

from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import NO_PROCESSING
from tests.models import Lazy, make_causal_lm
from tests.test_architectures import FAMILIES


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
