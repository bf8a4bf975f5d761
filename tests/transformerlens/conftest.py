"""Fixtures for the TransformerLens-parity tests: one tiny random model per family, exported once."""

from __future__ import annotations

import pytest

from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import NO_PROCESSING
from tests.models import make_causal_lm
from tests.test_architectures import FAMILIES


class _Lazy(dict):
    """key → value made by ``make(key)`` the first time a test asks for it."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


@pytest.fixture(scope="session")
def family_hf(tmp_path_factory):
    """family → HF folder (every family of tests/test_architectures.py; GPT-2 is the conftest's ``small_hf``)."""
    root = tmp_path_factory.mktemp("tl-families")
    seeds = {name: i for i, name in enumerate(FAMILIES)}
    return _Lazy(lambda name: make_causal_lm(root / name, FAMILIES[name], seed=seeds[name]))


@pytest.fixture(scope="session")
def family_bundle(family_hf, tmp_path_factory):
    """family → bundle exported without processing and without a decoder (processing is applied at load)."""
    root = tmp_path_factory.mktemp("tl-family-bundles")
    return _Lazy(lambda name: export_bundle(str(family_hf[name]), root / name, processing=NO_PROCESSING,
                                            decoder=False, progress=None))
