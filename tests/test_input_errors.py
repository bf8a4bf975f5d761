"""Bad input to the public API: a graphlens error naming the problem, before ONNX Runtime or numpy sees it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphlens import HookedTransformer, patching
from graphlens.errors import (BundleError, GraphlensError, InputError, InputTypeError, NotCachedError,
                              UnknownHookError)

TOKENS = np.array([[1, 5, 9, 200]])


@pytest.fixture(scope="module")
def model(small_bundle):
    return HookedTransformer(small_bundle)


@pytest.mark.parametrize("tokens, error, message", [
    (np.array([[1, -1, 3]]), InputError, r"out of range \[0, 300\): \[-1\]"),
    (np.array([[1, 300]]), InputError, "out of range"),
    (np.array([[1.0, 2.0]]), InputTypeError, "integers"),
    (np.zeros((0, 3), dtype=np.int64), InputError, "no sequences"),
    ([[1, 2], [3]], InputError, "rectangular"),
])
def test_run_graph_checks_tokens(model, tokens, error, message):
    with pytest.raises(error, match=message):
        model.run_graph(tokens, ["logits"])


def test_run_graph_checks_outputs(model):
    with pytest.raises(InputError, match="outputs is empty"):
        model.run_graph(TOKENS, [])
    with pytest.raises(UnknownHookError, match="blocks.0.hook_resid_pre"):
        model.run_graph(TOKENS, ["blocks.0.hook_resid_pr"])
    with pytest.raises(InputTypeError, match="strings"):
        model.run_graph(TOKENS, [3])
    logits = model.run_graph(TOKENS, "logits")["logits"]  # one name works as a list of one
    np.testing.assert_array_equal(logits, model(TOKENS))


@pytest.mark.parametrize("name, value, error, message", [
    ("blocks.0.hook_resid_pre.patc", np.zeros((1, 1, 64)), InputError, r"must end in \.patch, \.patch_mask, \.add"),
    ("blocks.0.hook_resid_pr.add", np.zeros((1, 1, 64)), UnknownHookError, "blocks.0.hook_resid_pre"),
    ("blocks.0.hook_resid_pre.add", np.array([["a"]]), InputTypeError, "must hold numbers"),
    ("blocks.0.hook_resid_pre.add", np.zeros((1, 1, 63)), InputError, "does not broadcast"),
    (7, np.zeros(1), InputTypeError, "strings"),
])
def test_feeds_are_checked_in_run_graph_and_generate(model, name, value, error, message):
    with pytest.raises(error, match=message):
        model.run_graph(TOKENS, ["logits"], feeds={name: value})
    with pytest.raises(error, match=message):
        model.generate(TOKENS, max_new_tokens=2, feeds={name: value}, verbose=False)


def test_a_patch_mask_must_be_boolean(model):
    feeds = {"blocks.0.hook_resid_pre.patch": np.zeros((1, 4, 64)), "blocks.0.hook_resid_pre.patch_mask": np.full((1, 4, 1), 0.5)}
    with pytest.raises(InputTypeError, match="bool mask"):
        model.run_graph(TOKENS, ["logits"], feeds=feeds)
    with pytest.raises(InputError, match="feed both"):
        model.generate(TOKENS, max_new_tokens=1, feeds={"blocks.0.hook_resid_pre.patch": np.zeros(64)}, verbose=False)


def test_generate_feeds_equal_run_graph_feeds(model):
    """The same .add vector steers generate's first step as it steers run_graph (the reference)."""
    vector = np.random.default_rng(0).normal(size=64).astype(np.float32)
    steered = model.run_graph(TOKENS, ["logits"], feeds={"blocks.1.hook_resid_pre.add": vector[None, None]})["logits"]
    out = model.generate(TOKENS, max_new_tokens=1, do_sample=False, verbose=False,
                         feeds={"blocks.1.hook_resid_pre.add": vector}, return_type="tokens")
    assert out[0, -1] == steered[0, -1].argmax()


@pytest.mark.parametrize("options, message", [
    (dict(temperature=math.nan), "temperature must be a finite number"),
    (dict(temperature=-1.0), "temperature must be ≥ 0"),
    (dict(top_k=0), "top_k must be > 0"),
    (dict(top_k=2.5), "top_k must be an integer"),
    (dict(top_p=math.nan), "top_p must be a finite"),
    (dict(min_p=1.5), "min_p must be in"),
    (dict(freq_penalty=math.inf), "freq_penalty must be a finite"),
    (dict(max_new_tokens=-1), "max_new_tokens must be ≥ 0"),
    (dict(eos_token_id=10_000), "eos_token_id must be token ids"),
    (dict(seed=-3), "seed must be"),
])
def test_generation_options_are_checked(model, options, message):
    with pytest.raises((InputError, InputTypeError), match=message):
        model.generate(TOKENS, **{"max_new_tokens": 2, "verbose": False, **options})


def test_a_valid_hook_that_was_not_cached_says_so(model):
    _, cache = model.run_with_cache(TOKENS, names_filter="blocks.0.hook_resid_pre")
    with pytest.raises(NotCachedError, match="is a hook of the model but not in this cache"):
        cache["blocks.1.hook_resid_post"]
    with pytest.raises(UnknownHookError, match="unknown hook name"):
        cache["blocks.1.hook_resid_postt"]
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_pre"], model.run_with_cache(TOKENS)[1]["resid_pre", 0])


@pytest.fixture(scope="module")
def patching_inputs(model):
    clean = np.array([[1, 5, 9, 200], [3, 4, 5, 6]])
    corrupted = clean.copy()
    corrupted[:, 1] = 77
    _, cache = model.run_with_cache(clean)
    return corrupted, cache, lambda logits: logits[:, -1, 11].mean()


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_batch=-1), "max_batch must be a positive integer"),
    (dict(max_batch=0), "max_batch must be a positive integer"),
    (dict(memory_budget_mb=0), "memory_budget_mb must be a positive number"),
    (dict(memory_budget_mb=math.nan), "memory_budget_mb must be a positive number"),
])
def test_patching_options_are_checked(model, patching_inputs, kwargs, message):
    with pytest.raises(InputError, match=message):
        patching.get_act_patch_resid_pre(model, *patching_inputs, progress=False, **kwargs)


def test_patching_results_do_not_depend_on_max_batch(model, patching_inputs):
    one = patching.get_act_patch_resid_pre(model, *patching_inputs, progress=False, max_batch=1)
    many = patching.get_act_patch_resid_pre(model, *patching_inputs, progress=False, max_batch=5)
    np.testing.assert_allclose(one, many, atol=1e-5)
    assert np.abs(one).max() > 0


def test_clean_and_corrupted_inputs_of_different_shapes(model, patching_inputs):
    corrupted, cache, metric = patching_inputs
    with pytest.raises(InputError, match="same batch size and length"):
        patching.get_act_patch_resid_pre(model, corrupted[:, :3], cache, metric, progress=False)
    with pytest.raises(InputError, match="same batch size and length"):
        patching.get_act_patch_resid_pre(model, corrupted[:1], cache, metric, progress=False)
    with pytest.raises(InputError, match="one number per call"):
        patching.get_act_patch_resid_pre(model, corrupted, cache, lambda logits: logits[:, -1], progress=False)


def test_a_missing_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for source in ("models/no-such-model", "./nothing", str(tmp_path / "nothing"), "a/b/c"):
        with pytest.raises(BundleError, match="does not exist: give a bundle folder"):
            HookedTransformer.from_pretrained(source)


def test_an_unreachable_hub_fails_on_the_first_connect(tmp_path, monkeypatch):
    from graphlens.export.pipeline import export_bundle
    from graphlens.export.source import ExportError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    with pytest.raises(ExportError, match="Hub is unreachable"):
        export_bundle("no-such-org/no-such-model", tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()


def test_every_error_class_is_a_graphlens_error_and_the_builtin_users_catch():
    assert issubclass(InputError, ValueError) and issubclass(InputError, GraphlensError)
    assert issubclass(InputTypeError, TypeError) and issubclass(UnknownHookError, KeyError)
    assert issubclass(NotCachedError, KeyError) and issubclass(BundleError, ValueError)
