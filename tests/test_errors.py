"""Bad input gets an error that names the problem and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import BertConfig

from graphlens import HookedTransformer
from graphlens.architectures import UnsupportedArchitectureError
from graphlens.bundle import BundleError
from graphlens.export.pipeline import export_bundle
from graphlens.export.source import ExportError
from graphlens.sites import UnknownHookError


@pytest.fixture(scope="module")
def model(small_bundle):
    return HookedTransformer.from_pretrained(small_bundle)


def test_unknown_hook_name_suggests_nearest(model):
    with pytest.raises(UnknownHookError, match=r"blocks\.0\.attn\.hook_pattern"):
        model.run_with_cache(np.arange(3)[None], names_filter="blocks.0.attn.hook_patern")
    with pytest.raises(UnknownHookError, match="nearest|Nearest"):
        model.run_with_cache(np.arange(3)[None], names_filter=["blocks.0.hook_resid_pre", "blocks.9.hook_resid_pre"])
    _, cache = model.run_with_cache(np.arange(3)[None], names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(KeyError, match="hook_resid_post"):
        cache["resid_post", 0]


def test_token_ids_out_of_range(model):
    with pytest.raises(ValueError, match=r"out of range \[0, 300\): \[300, 999\]"):
        model(np.array([[1, 300, 999]]))
    with pytest.raises(ValueError, match="out of range"):
        model(np.array([[-1, 2]]))


def test_sequence_longer_than_context(model):
    with pytest.raises(ValueError, match="longer than the model's context n_ctx=32"):
        model(np.zeros((1, 33), dtype=np.int64))


def test_bad_token_shapes(model):
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        model(np.zeros((1, 2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        model(np.zeros((1, 3), dtype=np.float32))


def test_folder_that_is_not_a_bundle_or_hf_model(tmp_path):
    with pytest.raises(BundleError, match="neither a graphlens bundle"):
        HookedTransformer.from_pretrained(tmp_path)
    (tmp_path / "graphlens.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BundleError, match="not a graphlens manifest"):
        HookedTransformer.from_pretrained(tmp_path)


def test_unsupported_architecture_lists_supported(tmp_path):
    BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="supports: .*GPT2LMHeadModel"):
        export_bundle(str(tmp_path), tmp_path / "out", progress=None)


def test_unreachable_hub_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="Hugging Face Hub is unreachable.*local folder"):
        export_bundle("no-such-org/no-such-model", tmp_path / "out", progress=None)


def test_processing_that_cannot_be_undone(small_bundle):
    with pytest.raises(BundleError, match="cannot be undone.*--no-fold-ln"):
        HookedTransformer.from_pretrained(small_bundle, fold_ln=False)


def test_strings_without_a_tokenizer(tmp_path):
    from tests.models import make_gpt2

    bundle = export_bundle(str(make_gpt2(tmp_path / "hf", tokenizer=False)), tmp_path / "b", progress=None)
    model = HookedTransformer.from_pretrained(bundle)
    with pytest.raises(ValueError, match="no tokenizer: pass token ids"):
        model("hello")
    assert model(np.arange(4)[None]).shape == (1, 4, 300)
