"""``set_use_attn_result`` / ``set_use_hook_mlp_in`` / ``set_use_split_qkv_input`` / ``set_use_attn_in``:
TransformerLens' optional hooks as graph sites, against TransformerLens 3.9 with the same flags on the same
weights (values, hooks, patches, the KV-cache path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer, KeyValueCache
from graphlens.errors import InputError, UnknownHookError
from tests.models import tl_reference
from tests.transformerlens.conftest import cache_equals_transformer_lens, set_flags
from tests.test_equivalence import assert_close

NEW_SITES = ("attn.hook_result", "hook_mlp_in")
PER_HEAD_SITES = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")
# the per-head input flags, alone and together with the other switches
PER_HEAD_FLAGS = {
    "split_qkv_input": ("use_split_qkv_input",),
    "attn_in": ("use_attn_in",),
    "all": ("use_split_qkv_input", "use_attn_in", "use_attn_result", "use_hook_mlp_in"),
}


@pytest.fixture(scope="module", params=["small", "heads8"])
def models(request, gpt2_bundles, hf_gpt2_dirs):
    ours = HookedTransformer.from_pretrained(gpt2_bundles[request.param, True])
    ref = tl_reference(hf_gpt2_dirs[request.param])
    yield ours, ref
    set_flags((ours, ref), PER_HEAD_FLAGS["all"], False)


def _both(ours, ref, on: bool):
    set_flags((ours, ref), ("use_attn_result", "use_hook_mlp_in"), on)


def test_cache_has_transformer_lens_sites_and_values(models):
    ours, ref = models
    tokens = np.random.default_rng(0).integers(0, ours.cfg.d_vocab, size=(2, 9))
    plain_logits = ours(tokens)
    _both(ours, ref, True)
    try:
        assert ours.cfg.use_attn_result and ours.cfg.use_hook_mlp_in
        logits, cache = ours.run_with_cache(tokens)
        with torch.no_grad():
            ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        assert list(cache.keys()) == list(ref_cache.keys())  # same names in the same (forward) order
        for name in ref_cache.keys():
            assert_close(cache[name], ref_cache[name], name)
        assert cache["blocks.0.attn.hook_result"].shape == (2, 9, ours.cfg.n_heads, ours.cfg.d_model)
        assert cache["result", 1].shape == cache["blocks.1.attn.hook_result"].shape
        assert_close(logits, ref_logits, "logits")
        np.testing.assert_allclose(logits, plain_logits, atol=1e-5)  # the rewrite computes the same function
        assert ours.blocks[1].attn.hook_result is ours.hook_dict["blocks.1.attn.hook_result"]
    finally:
        _both(ours, ref, False)
    assert not any(n.endswith(NEW_SITES) for n in ours.hook_names)
    _, cache = ours.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in cache
    np.testing.assert_array_equal(ours(tokens), plain_logits)  # flag off: the exported graph again


def test_hooks_and_patches_on_the_new_sites(models):
    ours, ref = models
    tokens = np.random.default_rng(1).integers(0, ours.cfg.d_vocab, size=(2, 7))
    last = ours.cfg.n_layers - 1

    def ablate_head(result, hook):
        result[:, :, 1] = 0.0

    def halve(x, hook):
        return x * 0.5

    hooks = [("blocks.0.attn.hook_result", ablate_head), (f"blocks.{last}.hook_mlp_in", halve)]
    _both(ours, ref, True)
    try:
        logits = ours.run_with_hooks(tokens, fwd_hooks=hooks)
        with torch.no_grad():
            ref_logits = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=hooks)
            _, ref_cache = ref.run_with_cache(torch.tensor(tokens), names_filter=f"blocks.{last}.hook_resid_mid")
        assert_close(logits, ref_logits, "logits with hooks on hook_result and hook_mlp_in")
        assert not np.allclose(logits, ours(tokens), atol=1e-3)  # the hooks did something

        # the same interventions as substitution inputs of the graph (any ONNX Runtime binding can feed them)
        mask = np.zeros((1, 1, ours.cfg.n_heads, 1), dtype=bool)
        mask[:, :, 1] = True
        patched = ours.run_graph(tokens, ["logits"], {"blocks.0.attn.hook_result.patch": np.zeros((1, 1, 1, 1), np.float32),
                                                      "blocks.0.attn.hook_result.patch_mask": mask})
        np.testing.assert_allclose(patched["logits"], ours.run_with_hooks(tokens, fwd_hooks=hooks[:1]), atol=1e-4)
        resid_mid = ref_cache[f"blocks.{last}.hook_resid_mid"].numpy()
        added = ours.run_graph(tokens, ["logits", f"blocks.{last}.hook_resid_mid"],
                               {f"blocks.{last}.hook_mlp_in.add": -0.5 * resid_mid})
        with torch.no_grad():
            ref_halved = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=hooks[1:])
        assert_close(added["logits"], ref_halved, "logits with hook_mlp_in.add")
        # hook_mlp_in is the MLP's input only: the residual stream around it is untouched
        assert_close(added[f"blocks.{last}.hook_resid_mid"], resid_mid, "resid_mid")
    finally:
        _both(ours, ref, False)
    with pytest.raises(UnknownHookError):
        ours.run_with_hooks(tokens, fwd_hooks=hooks)  # flag off: the hook point is gone


@pytest.mark.parametrize("flags", list(PER_HEAD_FLAGS))
def test_per_head_inputs_cache_equals_transformer_lens(models, flags):
    ours, ref = models
    tokens = np.random.default_rng(3).integers(0, ours.cfg.d_vocab, size=(2, 9))
    plain_logits, names = ours(tokens), list(ours.hook_names)
    set_flags((ours, ref), PER_HEAD_FLAGS[flags], True)
    try:
        logits, cache = cache_equals_transformer_lens(ours, ref, tokens)
        heads, d_model = ours.cfg.n_heads, ours.cfg.d_model
        split = ours.cfg.use_split_qkv_input
        assert cache["blocks.1.hook_q_input" if split else "blocks.1.hook_attn_in"].shape == (2, 9, heads, d_model)
        assert cache["blocks.1.ln1.hook_scale"].shape == (2, 9, heads, 1)  # ln1 runs on each head's copy
        np.testing.assert_allclose(logits, plain_logits, atol=1e-5)
    finally:
        set_flags((ours, ref), PER_HEAD_FLAGS[flags], False)
    assert ours.hook_names == names
    np.testing.assert_array_equal(ours(tokens), plain_logits)  # flag off: the exported graph again


def test_one_heads_input_patch_changes_only_that_head(models):
    ours, ref = models
    tokens = np.random.default_rng(4).integers(0, ours.cfg.d_vocab, size=(2, 7))
    heads, head = ours.cfg.n_heads, 1
    others = [h for h in range(heads) if h != head]
    replacement = np.random.default_rng(5).normal(size=(1, 1, 1, ours.cfg.d_model)).astype(np.float32)

    def replace_head(x, hook):
        x[:, :, head] = torch.as_tensor(replacement[0, 0, 0]) if isinstance(x, torch.Tensor) else replacement[0, 0, 0]

    def add_to_values(x, hook):
        return x + (torch.as_tensor(replacement) if isinstance(x, torch.Tensor) else replacement)

    sites = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "logits"]
    set_flags((ours, ref), ("use_split_qkv_input",), True)
    try:
        base = ours.run_graph(tokens, sites)
        mask = np.zeros((1, 1, heads, 1), dtype=bool)
        mask[:, :, head] = True
        patched = ours.run_graph(tokens, sites, {"blocks.0.hook_q_input.patch": replacement,
                                                 "blocks.0.hook_q_input.patch_mask": mask})
        q, q0 = patched["blocks.0.attn.hook_q"], base["blocks.0.attn.hook_q"]
        np.testing.assert_array_equal(q[:, :, others], q0[:, :, others])  # the other heads' queries are untouched
        assert not np.allclose(q[:, :, head], q0[:, :, head], atol=1e-3)
        for kv in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_v"):
            np.testing.assert_array_equal(patched[kv], base[kv])
        # ln1's sites are the value input's norm (TransformerLens caches ln1's last call, on value_input)
        shifted = ours.run_graph(tokens, sites, {"blocks.0.ln1.hook_normalized.add": replacement})
        np.testing.assert_array_equal(shifted["blocks.0.attn.hook_q"], q0)
        assert not np.allclose(shifted["blocks.0.attn.hook_v"], base["blocks.0.attn.hook_v"], atol=1e-3)
        hooks = [("blocks.0.hook_q_input", replace_head), ("blocks.1.hook_v_input", add_to_values)]
        with torch.no_grad(), ref.hooks(fwd_hooks=hooks):
            ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens), names_filter=lambda n: "attn.hook_" in n)
        assert_close(q, ref_cache["blocks.0.attn.hook_q"], "hook_q after a hook_q_input patch")
        with ours.hooks(fwd_hooks=hooks):
            logits, cache = ours.run_with_cache(tokens, names_filter=lambda n: "attn.hook_" in n)
        assert_close(logits, ref_logits, "logits with hooks on hook_q_input and hook_v_input")
        assert_close(cache["blocks.1.attn.hook_v"], ref_cache["blocks.1.attn.hook_v"], "hook_v")
        # hook_v_input.add as a substitution input is the same intervention
        added = ours.run_graph(tokens, ["logits"], {"blocks.1.hook_v_input.add": replacement,
                                                    "blocks.0.hook_q_input.patch": replacement,
                                                    "blocks.0.hook_q_input.patch_mask": mask})
        assert_close(added["logits"], ref_logits, "logits with hook_q_input.patch and hook_v_input.add")
    finally:
        set_flags((ours, ref), ("use_split_qkv_input",), False)


def test_a_hook_on_attn_in_equals_transformer_lens(models):
    ours, ref = models
    tokens = np.random.default_rng(6).integers(0, ours.cfg.d_vocab, size=(2, 7))

    def ablate_head(x, hook):
        x[:, :, 0] = 0.0

    hooks = [("blocks.1.hook_attn_in", ablate_head)]
    set_flags((ours, ref), ("use_attn_in",), True)
    try:
        with torch.no_grad():
            ref_logits = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=hooks)
        logits = ours.run_with_hooks(tokens, fwd_hooks=hooks)
        assert_close(logits, ref_logits, "logits with a hook on hook_attn_in")
        assert not np.allclose(logits, ours(tokens), atol=1e-3)
    finally:
        set_flags((ours, ref), ("use_attn_in",), False)
    with pytest.raises(UnknownHookError):
        ours.run_with_hooks(tokens, fwd_hooks=hooks)


# flags → (the sites they add, one of them generate caches)
KV_CASES = {
    "result-mlp_in": (("use_attn_result", "use_hook_mlp_in"), NEW_SITES, "blocks.0.attn.hook_result"),
    "per-head": (("use_split_qkv_input", "use_attn_in"), PER_HEAD_SITES + ("ln1.hook_scale", "ln1.hook_normalized"),
                 "blocks.1.hook_k_input"),
}


@pytest.mark.parametrize("case", list(KV_CASES))
def test_kv_cache_and_generate_see_the_new_sites(models, case):
    ours, ref = models
    flags, suffixes, generated_site = KV_CASES[case]
    tokens = np.random.default_rng(2).integers(1, ours.cfg.d_vocab, size=(1, 8))
    wanted = lambda n: n.endswith(suffixes)  # noqa: E731
    set_flags((ours, ref), flags, True)
    try:
        _, full = ours.run_with_cache(tokens, names_filter=wanted)
        cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
        _, first = ours.run_with_cache(tokens[:, :5], names_filter=wanted, past_kv_cache=cache)
        _, second = ours.run_with_cache(tokens[:, 5:], names_filter=wanted, past_kv_cache=cache)
        assert set(full.keys()) == set(first.keys()) == set(second.keys())
        assert len(full.keys()) == len(suffixes) * ours.cfg.n_layers
        for name in full.keys():
            np.testing.assert_allclose(np.concatenate([first[name], second[name]], axis=1), full[name], atol=1e-4)
        out, generated = ours.generate(tokens, max_new_tokens=3, do_sample=False, verbose=False, return_cache=True,
                                       names_filter=generated_site)
        with torch.no_grad():
            ref_out = ref.generate(torch.tensor(tokens), max_new_tokens=3, do_sample=False, verbose=False)
            _, ref_cache = ref.run_with_cache(ref_out, names_filter=generated_site)
        np.testing.assert_array_equal(out, ref_out.numpy())
        assert_close(generated[generated_site], ref_cache[generated_site], "generate cache")
    finally:
        set_flags((ours, ref), flags, False)


def test_switches_take_booleans(models):
    ours, _ = models
    for setter in (ours.set_use_attn_result, ours.set_use_split_qkv_input, ours.set_use_attn_in):
        with pytest.raises(InputError, match="True or False"):
            setter("yes")
    assert not ours.cfg.use_split_qkv_input and not ours.cfg.use_attn_in
