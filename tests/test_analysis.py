"""ActivationCache analysis methods vs TransformerLens 3.9 on the same weights (values and labels)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from tests.models import tl_reference

ATOL = RTOL = 1e-4
CASES = [("small", True), ("small", False), ("heads8", True)]
POS_SLICES = [None, -1, 0, [0, 2, 3], (1, 4), slice(0, None, 2), np.array([4, 1])]


def to_torch(x):
    return torch.tensor(x) if isinstance(x, np.ndarray) else x


def assert_same(ours, ref, what: str) -> None:
    if isinstance(ref, tuple):  # (stack, labels)
        assert isinstance(ours, tuple), what
        assert ours[1] == ref[1], f"{what}: labels differ"
        ours, ref = ours[0], ref[0]
    ref = ref.detach().numpy()
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != TransformerLens {ref.shape}"
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=RTOL, err_msg=what)


@pytest.fixture(scope="module", params=CASES, ids=[f"{s}-{'processed' if p else 'raw'}" for s, p in CASES])
def pair(request, gpt2_bundles, hf_gpt2_dirs):
    shape, processed = request.param
    flags = dict(fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
                 fold_value_biases=processed)
    ours = HookedTransformer.from_pretrained(gpt2_bundles[shape, processed], **flags)
    ref = tl_reference(hf_gpt2_dirs[shape], processing=processed)
    tokens = np.random.default_rng(3).integers(0, ours.cfg.d_vocab, size=(3, 7))
    _, cache = ours.run_with_cache(tokens)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    return ours, cache, ref, ref_cache, tokens


def check(pair, method: str, *args, **kwargs) -> None:
    _, cache, _, ref_cache, _ = pair
    what = f"{method}({', '.join(map(repr, args))}, {kwargs})"
    ours = getattr(cache, method)(*args, **kwargs)
    with torch.no_grad():
        ref = getattr(ref_cache, method)(*map(to_torch, args), **{k: to_torch(v) for k, v in kwargs.items()})
    assert_same(ours, ref, what)


def test_accumulated_resid(pair):
    n = pair[0].cfg.n_layers
    for layer, incl_mid, apply_ln, pos_slice in itertools.product(
        [None, -1, 0, 1, n], [False, True], [False, True], POS_SLICES
    ):
        check(pair, "accumulated_resid", layer, incl_mid=incl_mid, apply_ln=apply_ln, pos_slice=pos_slice,
              return_labels=True)
    for layer, apply_ln in itertools.product(range(n), [False, True]):
        check(pair, "accumulated_resid", layer, apply_ln=apply_ln, mlp_input=True, return_labels=True)


def test_decompose_resid(pair):
    n = pair[0].cfg.n_layers
    for layer, mode, apply_ln, incl_embeds, pos_slice in itertools.product(
        [None, 1, n], ["all", "mlp", "attn"], [False, True], [True, False], [None, -1, [1, 2], (0, 3)]
    ):
        check(pair, "decompose_resid", layer, mode=mode, apply_ln=apply_ln, incl_embeds=incl_embeds,
              pos_slice=pos_slice, return_labels=True)
    for layer, apply_ln in itertools.product(range(n), [False, True]):
        check(pair, "decompose_resid", layer, mlp_input=True, apply_ln=apply_ln, return_labels=True)


def test_compute_head_results_adds_hook_result(pair):
    _, cache, _, ref_cache, _ = pair
    cache.compute_head_results()
    ref_cache.compute_head_results()
    for layer in range(pair[0].cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_result"
        assert_same(cache[name], ref_cache[name], name)
        assert_same(cache["result", layer, "attn"], ref_cache[name], name)


def test_stack_head_results(pair):
    n = pair[0].cfg.n_layers
    for layer, incl_remainder, apply_ln, pos_slice in itertools.product(
        [-1, 0, 1, n], [False, True], [False, True], POS_SLICES
    ):
        check(pair, "stack_head_results", layer, return_labels=True, incl_remainder=incl_remainder,
              pos_slice=pos_slice, apply_ln=apply_ln)


def test_neuron_results(pair):
    ours, _, _, _, _ = pair
    rng = np.random.default_rng(0)
    vec = rng.standard_normal(ours.cfg.d_model).astype(np.float32)
    mat = rng.standard_normal((ours.cfg.d_model, 3)).astype(np.float32)
    neuron_slices = [None, (0, 10), [1, 5, 7], 4]
    for layer, neuron_slice, pos_slice, project in itertools.product(
        range(ours.cfg.n_layers), neuron_slices, [None, -1, [0, 3]], [None, vec, mat]
    ):
        if isinstance(neuron_slice, int) and project is mat:
            continue  # TransformerLens fails there too (a [n_outs] projection against [..., pos] activations)
        check(pair, "get_neuron_results", layer, neuron_slice=neuron_slice, pos_slice=pos_slice,
              project_output_onto=project)
    for layer, neuron_slice, incl_remainder, apply_ln, project, pos_slice in itertools.product(
        [0, 1, ours.cfg.n_layers], neuron_slices[:3], [False, True], [False, True], [None, vec, mat], [None, -1]
    ):
        check(pair, "stack_neuron_results", layer, pos_slice=pos_slice, neuron_slice=neuron_slice,
              return_labels=True, incl_remainder=incl_remainder, apply_ln=apply_ln, project_output_onto=project)


def test_get_full_resid_decomposition(pair):
    ours = pair[0]
    rng = np.random.default_rng(1)
    vec = rng.standard_normal(ours.cfg.d_model).astype(np.float32)
    mat = rng.standard_normal((ours.cfg.d_model, 2)).astype(np.float32)
    for layer, expand_neurons, apply_ln, pos_slice, project in itertools.product(
        [None, 0, 1], [True, False], [False, True], [None, -1, [2, 4]], [None, vec, mat]
    ):
        check(pair, "get_full_resid_decomposition", layer, expand_neurons=expand_neurons, apply_ln=apply_ln,
              pos_slice=pos_slice, return_labels=True, project_output_onto=project)
    for apply_ln in (False, True):
        check(pair, "get_full_resid_decomposition", 1, mlp_input=True, apply_ln=apply_ln, return_labels=True)


def test_full_decomposition_sums_to_the_residual_stream(pair):
    _, cache, _, _, _ = pair
    stack = cache.get_full_resid_decomposition()
    np.testing.assert_allclose(stack.sum(0), cache["resid_post", -1], atol=1e-4)


def test_stack_activation(pair):
    n = pair[0].cfg.n_layers
    for name, layer, sublayer in [("pattern", -1, None), ("resid_pre", 1, None), ("scale", n, "ln1"),
                                  ("post", 2, None), ("z", -1, "attn")]:
        check(pair, "stack_activation", name, layer, sublayer)


def test_apply_ln_to_stack(pair):
    ours, cache, _, ref_cache, _ = pair
    n = ours.cfg.n_layers
    stack = cache.accumulated_resid()
    for layer, mlp_input, batch_slice in itertools.product([None, 0, n - 1], [False, True], [None, 1, [0, 2]]):
        if mlp_input and layer is None:
            continue
        check(pair, "apply_ln_to_stack", stack, layer, mlp_input=mlp_input, batch_slice=batch_slice)
    last = cache.accumulated_resid(pos_slice=-1)
    check(pair, "apply_ln_to_stack", last, pos_slice=-1)
    check(pair, "apply_ln_to_stack", stack, recompute_ln=True)


def test_logit_attrs(pair):
    ours, cache, _, _, tokens = pair
    stack_last = cache.decompose_resid(pos_slice=-1)  # [comp, batch, d_model]
    stack = cache.decompose_resid()  # [comp, batch, pos, d_model]
    check(pair, "logit_attrs", stack_last, np.array(tokens[:, -1]), pos_slice=-1)
    check(pair, "logit_attrs", stack_last, np.array(tokens[:, -1]), np.array(tokens[:, 0]), pos_slice=-1)
    check(pair, "logit_attrs", stack, np.array(tokens))
    check(pair, "logit_attrs", stack, np.array(tokens), np.array(tokens[:, ::-1].copy()))
    check(pair, "logit_attrs", stack, 5)
    check(pair, "logit_attrs", stack, 5, 7)
    words = [w for w in (" the", " and", " John", " Mary", "The") if len(ours.to_tokens(w, prepend_bos=False)[0]) == 1]
    check(pair, "logit_attrs", stack, words[0], words[1])
    check(pair, "logit_attrs", stack_last, np.array(tokens[1:3, -1]), pos_slice=-1, batch_slice=(1, 3))


def test_tokens_to_residual_directions(pair):
    ours, _, ref, _, tokens = pair
    for t in (3, " the", np.array(4), np.array(tokens[0]), np.array(tokens)):
        with torch.no_grad():
            expected = ref.tokens_to_residual_directions(to_torch(t))
        assert_same(ours.tokens_to_residual_directions(t), expected, f"tokens_to_residual_directions({t!r})")


def test_accumulated_bias(pair):
    ours, _, ref, _, _ = pair
    for layer, mlp_input, incl in itertools.product(range(ours.cfg.n_layers), [False, True], [False, True]):
        with torch.no_grad():
            expected = ref.accumulated_bias(layer, mlp_input, include_mlp_biases=incl)
        assert_same(ours.accumulated_bias(layer, mlp_input, include_mlp_biases=incl), expected, f"layer {layer}")


def test_methods_without_batch_dim(pair):
    ours, _, ref, _, tokens = pair
    _, cache = ours.run_with_cache(tokens[:1], remove_batch_dim=True)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens[:1]), remove_batch_dim=True)
    bare = (ours, cache, ref, ref_cache, tokens)
    check(bare, "accumulated_resid", apply_ln=True, pos_slice=[0, 2], return_labels=True)
    check(bare, "accumulated_resid", 1, apply_ln=True, incl_mid=True, return_labels=True)
    check(bare, "decompose_resid", apply_ln=True, pos_slice=-1, return_labels=True)
    check(bare, "stack_head_results", incl_remainder=True, apply_ln=True, return_labels=True)
    check(bare, "stack_neuron_results", 1, apply_ln=True, return_labels=True)
    check(bare, "get_full_resid_decomposition", apply_ln=True, pos_slice=-1, return_labels=True)
    check(bare, "logit_attrs", cache.decompose_resid(), np.array(tokens[0]), has_batch_dim=False)


def test_remove_batch_dim_returns_the_cache(pair):
    ours, _, ref, _, tokens = pair
    _, cache = ours.run_with_cache(tokens[:1])
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(tokens[:1]))
    assert cache.remove_batch_dim() is cache and ref_cache.remove_batch_dim() is ref_cache
    check((ours, cache, ref, ref_cache, tokens), "stack_head_results", apply_ln=True, pos_slice=-1, return_labels=True)


def test_batch_slice_then_methods(pair):
    ours, cache, ref, ref_cache, tokens = pair
    sliced = (ours, cache.apply_slice_to_batch_dim([0, 2]), ref, ref_cache.apply_slice_to_batch_dim([0, 2]), tokens)
    check(sliced, "accumulated_resid", apply_ln=True, return_labels=True)
    check(sliced, "get_full_resid_decomposition", 1, apply_ln=True, return_labels=True)


# ---- errors ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(small_bundle):
    model = HookedTransformer.from_pretrained(small_bundle)
    _, cache = model.run_with_cache(np.arange(10).reshape(2, 5))
    return model, cache


@pytest.mark.parametrize("call", [
    lambda c: c.accumulated_resid(3),
    lambda c: c.accumulated_resid(-2),
    lambda c: c.decompose_resid(7),
    lambda c: c.stack_head_results(5),
    lambda c: c.stack_neuron_results(9),
    lambda c: c.get_neuron_results(2),
    lambda c: c.get_full_resid_decomposition(3),
    lambda c: c.stack_activation("resid_pre", 4),
    lambda c: c.accumulated_resid(2, mlp_input=True),
    lambda c: c.model.accumulated_bias(3),
])
def test_layer_out_of_range(small, call):
    with pytest.raises(ValueError, match="out of range|needs a layer below"):
        call(small[1])


def test_unknown_activation_names(small):
    model, cache = small
    with pytest.raises(KeyError, match="unknown hook name 'blocks.0.hook_resid_pree'"):
        cache.stack_activation("resid_pree")
    _, partial = model.run_with_cache(np.arange(5), names_filter=["blocks.0.hook_resid_pre"])
    with pytest.raises(KeyError, match="blocks.1.hook_resid_pre is a hook of the model but not in this cache"):
        partial.accumulated_resid()
    with pytest.raises(KeyError, match="not in this cache"):
        partial.compute_head_results()


@pytest.mark.parametrize("pos_slice", [5, -6, [0, 9], np.array([7])])
def test_pos_slice_that_does_not_fit(small, pos_slice):
    cache = small[1]
    with pytest.raises(IndexError, match=r"pos_slice=.* does not fit: the activation has 5"):
        cache.accumulated_resid(pos_slice=pos_slice)
    with pytest.raises(IndexError, match="does not fit"):
        cache.stack_head_results(pos_slice=pos_slice)


def test_stack_and_slice_mismatch(small):
    cache = small[1]
    stack = cache.decompose_resid(pos_slice=-1)
    with pytest.raises(ValueError, match="does not match the cached ln scale"):
        cache.apply_ln_to_stack(stack, 1)  # built with pos_slice=-1, scaled without it


def test_logit_attrs_token_shapes(small):
    model, cache = small
    stack = cache.decompose_resid(pos_slice=-1)  # [comp, 2, d_model]
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(stack, np.array([1, 2]), np.array([3]), pos_slice=-1)
    with pytest.raises(ValueError, match="do not broadcast"):
        cache.logit_attrs(stack, np.array([1, 2, 3]), pos_slice=-1)
    with pytest.raises(ValueError, match="out of range"):
        cache.logit_attrs(stack, np.array([1, model.cfg.d_vocab]), pos_slice=-1)
    with pytest.raises(ValueError, match="mode must be"):
        cache.decompose_resid(mode="heads")
