"""Shared fixtures: tiny random GPT-2 folders and their exported bundles (built once per session)."""

from __future__ import annotations

import os
import warnings

import pytest

from graphlens.rewrite.weights import NO_PROCESSING, Processing

warnings.filterwarnings("ignore", category=DeprecationWarning)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Shapes: the default; one with more heads and a non-4x MLP; one deeper and wider.
GPT2_SHAPES = {
    "small": dict(n_layer=2, n_embd=64, n_head=4),
    "heads8": dict(n_layer=3, n_embd=64, n_head=8, n_inner=96, activation_function="gelu"),
}


@pytest.fixture(scope="session")
def hf_gpt2_dirs(tmp_path_factory):
    from tests.models import make_gpt2

    root = tmp_path_factory.mktemp("hf")
    return {name: make_gpt2(root / name, seed=i, **shape) for i, (name, shape) in enumerate(GPT2_SHAPES.items())}


class _LazyBundles(dict):
    """(shape name, processed?) → bundle folder, exported the first time a test asks for it."""

    def __init__(self, hf_dirs, root):
        super().__init__()
        self.hf_dirs, self.root = hf_dirs, root

    def __missing__(self, key):
        from graphlens.export.pipeline import export_bundle

        name, processed = key
        processing = Processing() if processed else NO_PROCESSING
        out = self.root / f"{name}-{'processed' if processed else 'raw'}"
        self[key] = export_bundle(str(self.hf_dirs[name]), out, processing=processing, progress=None)
        return self[key]


@pytest.fixture(scope="session")
def gpt2_bundles(hf_gpt2_dirs, tmp_path_factory):
    """(shape name, processed?) → bundle folder (exported lazily, once per session)."""
    return _LazyBundles(hf_gpt2_dirs, tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def small_bundle(gpt2_bundles):
    return gpt2_bundles["small", True]


@pytest.fixture(scope="session")
def small_hf(hf_gpt2_dirs):
    return hf_gpt2_dirs["small"]
