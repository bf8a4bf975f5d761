"""Generation with the KV-cache decoder graph vs TransformerLens 3.9 and HF ``generate``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from graphlens import HookedTransformer
from graphlens.bundle import BundleError
from graphlens.runtime.sampling import sample_logits, sampling_probs
from tests.models import tl_reference
from tests.test_equivalence import assert_close

PROMPTS = ["The quick brown fox", "Hello", "When Mary and John went"]


@pytest.fixture(scope="module")
def model(small_bundle):
    return HookedTransformer.from_pretrained(small_bundle)


@pytest.fixture(scope="module")
def tl(small_hf):
    return tl_reference(small_hf)


def tl_generate(tl, input, **kwargs):
    with torch.no_grad():
        out = tl.generate(input, verbose=False, **kwargs)
    return out.numpy() if isinstance(out, torch.Tensor) else out


def left_padding_mask(tokens: np.ndarray, pad: int) -> np.ndarray:
    """1 from each row's BOS (the last leading pad, BOS == pad here) on."""
    first_real = (tokens != pad).argmax(1)
    return (np.arange(tokens.shape[1])[None] >= np.maximum(first_real - 1, 0)[:, None]).astype(np.int64)


# ---- the decoder graph on its own (plain onnxruntime) ---------------------------------------------------
def test_decoder_graph_empty_past_and_split_prefix_equal_the_full_graph(small_bundle):
    manifest = json.loads((small_bundle / "graphlens.json").read_text())
    entry = manifest["decoder"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    full = ort.InferenceSession(str(small_bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(small_bundle / entry["file"]), options, providers=["CPUExecutionProvider"])
    n_layers, cfg = entry["n_layers"], manifest["config"]
    past_names = [f"past_key_values.{l}.{k}" for l in range(n_layers) for k in ("key", "value")]
    present_names = [f"present.{l}.{k}" for l in range(n_layers) for k in ("key", "value")]
    tokens = np.random.default_rng(0).integers(1, cfg["d_vocab"], size=(3, 9))
    (expected,) = full.run(["logits"], {"input_ids": tokens})

    def step(ids, mask, positions, past):
        outs = dec.run(["logits", *present_names], {"input_ids": ids, "attention_mask": mask,
                                                    "position_ids": positions, **dict(zip(past_names, past))})
        return outs[0], outs[1:]

    empty = [np.zeros((3, cfg["n_heads"], 0, cfg["d_head"]), np.float32)] * len(past_names)
    positions = np.broadcast_to(np.arange(9), (3, 9))
    logits, present = step(tokens, np.ones_like(tokens), positions, empty)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)
    assert present[0].shape == (3, cfg["n_heads"], 9, cfg["d_head"])
    head, _ = step(tokens[:, :5], np.ones((3, 5), np.int64), positions[:, :5], empty)
    tail, present = step(tokens[:, 5:], np.ones_like(tokens), positions[:, 5:], _)
    np.testing.assert_allclose(np.concatenate([head, tail], 1), expected, atol=1e-4, rtol=1e-4)
    assert present[0].shape[2] == 9


# ---- greedy: exactly TransformerLens' and HF's tokens ----------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_greedy_batch_of_uneven_prompts_equals_transformer_lens(model, tl, use_cache):
    kwargs = dict(max_new_tokens=12, do_sample=False, use_past_kv_cache=use_cache)
    ours = model.generate(PROMPTS, verbose=False, return_type="tokens", **kwargs)
    ref = tl_generate(tl, PROMPTS, return_type="tokens", **kwargs)
    np.testing.assert_array_equal(ours, ref)
    assert (ours[:, 0] == model.tokenizer.pad_token_id).any()  # really left-padded
    assert model.generate(PROMPTS, verbose=False, **kwargs) == tl_generate(tl, PROMPTS, **kwargs)  # strings


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_greedy_tokens_in_tokens_out_equals_transformer_lens(model, tl, use_cache):
    tokens = np.random.default_rng(3).integers(1, model.cfg.d_vocab, size=(2, 7))
    kwargs = dict(max_new_tokens=10, do_sample=False, use_past_kv_cache=use_cache, stop_at_eos=False)
    ours = model.generate(tokens, verbose=False, **kwargs)
    assert isinstance(ours, np.ndarray) and ours.shape == (2, 17)
    np.testing.assert_array_equal(ours, tl_generate(tl, torch.tensor(tokens), **kwargs))


def test_greedy_equals_hf_generate(model, small_hf):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(small_hf).eval()
    tokens = model.to_tokens(PROMPTS, padding_side="left")
    mask = left_padding_mask(tokens, model.tokenizer.pad_token_id)
    for use_cache in (True, False):
        with torch.no_grad():
            ref = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=12,
                              do_sample=False, use_cache=use_cache, pad_token_id=model.tokenizer.pad_token_id)
        ours = model.generate(PROMPTS, max_new_tokens=12, do_sample=False, use_past_kv_cache=use_cache,
                              verbose=False, return_type="tokens")
        np.testing.assert_array_equal(ours, ref.numpy()[:, : ours.shape[1]])


def test_raw_bundle_processed_at_load_generates_as_transformer_lens(gpt2_bundles, tl):
    raw = HookedTransformer.from_pretrained(gpt2_bundles["small", False])  # TL's processing applied at load
    kwargs = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False)
    assert raw.generate(PROMPTS, verbose=False, **kwargs) == tl_generate(tl, PROMPTS, **kwargs)
    shared = raw._decoder_graph.weights.keys() & raw.graph.weights.keys()
    assert shared and all(raw._decoder_graph.weights[n] is raw.graph.weights[n] for n in shared)  # one copy


# ---- sampling ------------------------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed(model):
    args = dict(max_new_tokens=12, stop_at_eos=False, verbose=False, temperature=1.5)
    first = model.generate(PROMPTS, seed=7, **args)
    assert model.generate(PROMPTS, seed=7, **args) == first
    assert model.generate(PROMPTS, seed=np.random.default_rng(7), **args) == first
    assert model.generate(PROMPTS, seed=8, **args) != first


def tl_frequencies(logits: np.ndarray, n: int, **options) -> np.ndarray:
    from transformer_lens.utilities import sample_logits as tl_sample

    torch.manual_seed(0)
    rows = torch.tensor(logits, dtype=torch.float32).repeat(n, 1)
    kwargs = dict(options)
    if "tokens" in kwargs:
        kwargs["tokens"] = torch.tensor(kwargs["tokens"]).repeat(n, 1)
    drawn = tl_sample(rows, **kwargs).numpy()
    return np.bincount(drawn, minlength=logits.shape[-1]) / n


@pytest.mark.parametrize(
    "options",
    [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=3), dict(top_k=3, temperature=0.7),
     dict(top_p=0.6), dict(top_p=0.9, temperature=1.3), dict(freq_penalty=0.8, tokens=[[1, 1, 1, 4, 0, 9]])],
    ids=["plain", "t0.5", "t2", "topk3", "topk3-t0.7", "topp0.6", "topp0.9-t1.3", "freq0.8"],
)
def test_sampling_distribution_equals_transformer_lens(options):
    logits = np.random.default_rng(0).normal(size=(1, 10)) * 1.5
    probs = sampling_probs(logits, **{**options, "tokens": np.array(options["tokens"]) if "tokens" in options else None})
    n = 40_000
    np.testing.assert_allclose(probs[0], tl_frequencies(logits, n, **options), atol=0.012)
    if "top_k" in options:
        assert (probs[0] > 0).sum() == options["top_k"]
    ours = sample_logits(np.repeat(logits, n, 0), np.random.default_rng(1), **{
        **options, "tokens": np.repeat(np.array(options["tokens"]), n, 0) if "tokens" in options else None})
    np.testing.assert_allclose(np.bincount(ours, minlength=10) / n, probs[0], atol=0.012)


@pytest.mark.parametrize("min_p", [0.05, 0.3])
def test_min_p_keeps_what_hf_min_p_keeps(min_p):
    from transformers.generation.logits_process import MinPLogitsWarper

    logits = np.random.default_rng(2).normal(size=(4, 50)) * 2
    ref = MinPLogitsWarper(min_p=min_p)(None, torch.tensor(logits, dtype=torch.float32).clone())
    ref_probs = torch.softmax(ref.double(), -1).numpy()
    np.testing.assert_allclose(sampling_probs(logits, min_p=min_p), ref_probs, atol=1e-6)
    assert (ref_probs == 0).any()


def test_greedy_when_temperature_zero_and_bad_sampling_options_raise(model):
    greedy = model.generate(PROMPTS, max_new_tokens=5, do_sample=False, verbose=False)
    assert model.generate(PROMPTS, max_new_tokens=5, temperature=0.0, verbose=False) == greedy
    with pytest.raises(ValueError, match="top_p"):
        model.generate("Hello", max_new_tokens=2, top_p=1.5, verbose=False)
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate("Hello", max_new_tokens=model.cfg.n_ctx, verbose=False)
    with pytest.raises(ValueError, match="return_type"):
        model.generate("Hello", max_new_tokens=2, return_type="logits", verbose=False)  # "embeds" works: test_embeddings


# ---- caches, steering ------------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_return_cache_equals_run_with_cache_over_the_final_tokens(model, tl, use_cache):
    runs = model._decoder_graph.session_runs if getattr(model, "_decoder_graph", None) else 0
    out, cache = model.generate(PROMPTS, max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens",
                                use_past_kv_cache=use_cache, return_cache=True)
    if use_cache:  # one step per token and one for the last token: no second pass over the sequence
        assert model._decoder_graph.session_runs - runs == 7
    mask = torch.tensor(left_padding_mask(out, model.tokenizer.pad_token_id))
    with torch.no_grad():
        _, ref = tl.run_with_cache(torch.tensor(out), attention_mask=mask)
    assert set(cache.keys()) == set(ref.keys())
    for name in ref.keys():
        assert_close(cache[name], ref[name], name)


def test_return_cache_names_filter(model):
    _, cache = model.generate("Hello", max_new_tokens=3, verbose=False, seed=0, return_cache=True,
                              names_filter=lambda n: n.endswith("hook_pattern"))
    assert list(cache.keys()) == [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    pos = model.to_tokens("Hello").shape[1] + 3
    assert cache["pattern", 0].shape == (1, model.cfg.n_heads, pos, pos)


def test_steering_during_generation_equals_a_transformer_lens_hook(model, tl):
    site = "blocks.0.hook_resid_post"
    vector = np.random.default_rng(5).normal(size=model.cfg.d_model).astype(np.float32) * 3
    kwargs = dict(max_new_tokens=10, do_sample=False, stop_at_eos=False)
    ours = model.generate(PROMPTS, verbose=False, feeds={f"{site}.add": vector}, **kwargs)
    with tl.hooks(fwd_hooks=[(site, lambda x, hook: x + torch.tensor(vector))]):
        ref = tl_generate(tl, PROMPTS, **kwargs)
    assert ours == ref
    assert ours != model.generate(PROMPTS, verbose=False, **kwargs)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_python_hooks_run_at_every_step_as_transformer_lens_hooks(model, tl, use_cache):
    site = "blocks.1.mlp.hook_post"
    seen = []

    def ablate(x, hook):  # TL passes torch tensors, graphlens numpy: both support this in-place edit
        seen.append(tuple(x.shape))
        x[..., :40] = 3.0
        return x

    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, use_past_kv_cache=use_cache,
                  return_type="tokens")
    with model.hooks(fwd_hooks=[(site, ablate)]):
        ours = model.generate(PROMPTS, verbose=False, **kwargs)
    ours_shapes, seen[:] = list(seen), []
    with tl.hooks(fwd_hooks=[(site, ablate)]):
        ref = tl_generate(tl, PROMPTS, **kwargs)
    np.testing.assert_array_equal(ours, ref)
    assert ours_shapes == seen  # the same positions at every step (only the new ones with the KV cache)
    assert (ours != model.generate(PROMPTS, verbose=False, **kwargs)).any()


def test_patch_feed_at_the_new_positions(model, tl):
    site = "blocks.1.attn.hook_v"
    kwargs = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False)
    zeros = np.zeros((1, 1, model.cfg.n_heads, model.cfg.d_head), np.float32)
    mask = np.zeros((1, 1, model.cfg.n_heads, 1), bool)
    mask[..., 1, :] = True
    ours = model.generate(PROMPTS, verbose=False, return_type="tokens",
                          feeds={f"{site}.patch": zeros, f"{site}.patch_mask": mask}, **kwargs)

    def zero_head(v, hook):
        v[:, :, 1] = 0
        return v

    with tl.hooks(fwd_hooks=[(site, zero_head)]):
        ref = tl_generate(tl, PROMPTS, return_type="tokens", **kwargs)
    np.testing.assert_array_equal(ours, ref)


# ---- errors, CLI, CUDA -----------------------------------------------------------------------------------
def test_bundle_without_decoder_and_bad_feeds_raise_clearly(model, small_bundle, tmp_path):
    with pytest.raises(ValueError, match="patch_mask"):
        model.generate("Hello", max_new_tokens=2, verbose=False, feeds={"blocks.0.hook_resid_post.sub": np.zeros(1)})
    with pytest.raises(KeyError, match="hook_resid_post"):
        model.generate("Hello", max_new_tokens=2, verbose=False, feeds={"blocks.0.hook_resid_pots.add": np.zeros(1)})
    old = tmp_path / "old"
    shutil.copytree(small_bundle, old)
    manifest = json.loads((old / "graphlens.json").read_text())
    del manifest["decoder"]
    (old / "graphlens.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="graphlens export"):
        HookedTransformer(old).generate("Hello", max_new_tokens=2, verbose=False)


def test_cli_generate_streams_the_greedy_continuation(model, small_bundle):
    from graphlens.cli import main

    result = CliRunner().invoke(main, ["generate", str(small_bundle), "The quick brown fox", "--max-new-tokens", "8",
                                       "--greedy"])
    assert result.exit_code == 0, result.output
    expected = model.generate("The quick brown fox", max_new_tokens=8, do_sample=False, verbose=False)
    assert result.output.strip() == expected.strip()


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu")
def test_cuda_generation_equals_cpu_and_keeps_the_cache_on_the_device(small_bundle):
    cpu = HookedTransformer.from_pretrained(small_bundle, device="cpu")
    gpu = HookedTransformer.from_pretrained(small_bundle, device="cuda")
    kwargs = dict(max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens")
    np.testing.assert_array_equal(gpu.generate(PROMPTS, **kwargs), cpu.generate(PROMPTS, **kwargs))
    decoder = gpu._kv_decoder(2)
    decoder.step(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), np.tile(np.arange(3), (2, 1)))
    assert all(value.device_name().lower() == "cuda" for value in decoder.past)
    assert decoder.past_length == 3
