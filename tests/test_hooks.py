"""Python hooks (run_with_hooks, add_hook, hooks(), start/stop_at_layer) against TransformerLens 3.9."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from graphlens.rewrite.specialise import specialise
from graphlens.runtime.hooks import HookResultError
from graphlens.runtime.partitioned import compiled_plan
from graphlens.sites import UnknownHookError
from tests.models import tl_reference
from tests.test_equivalence import assert_close

COMPUTE_OPS = ("MatMul", "Gemm", "Softmax", "ReduceMean", "Tanh", "Gather")


@pytest.fixture(scope="module")
def models(small_bundle, small_hf):
    torch.set_grad_enabled(False)
    return HookedTransformer(small_bundle), tl_reference(small_hf)


@pytest.fixture(scope="module")
def tokens(models):
    rng = np.random.default_rng(3)
    return rng.integers(0, models[0].cfg.d_vocab, size=(2, 7)), rng.integers(0, models[0].cfg.d_vocab, size=(2, 7))


def for_tl(fn):
    """The same numpy hook, run by TransformerLens (the numpy view shares the torch tensor's memory)."""

    def hook(act, hook):
        result = fn(act.numpy(), hook)
        return None if result is None else torch.from_numpy(np.ascontiguousarray(result))

    return hook


def both_runs(models, tokens, fwd_hooks):
    """(ours, TL): logits and the full cache of a run with ``fwd_hooks`` active."""
    ours, ref = models
    with ours.hooks(fwd_hooks=fwd_hooks):
        ours_out = ours.run_with_cache(tokens)
    with ref.hooks(fwd_hooks=[(name, for_tl(fn)) for name, fn in fwd_hooks]):
        ref_out = ref.run_with_cache(torch.tensor(tokens))
    return ours_out, ref_out


def assert_runs_equal(ours_out, ref_out):
    (logits, cache), (ref_logits, ref_cache) = ours_out, ref_out
    assert_close(logits, ref_logits, "logits")
    assert list(cache.keys()) == list(ref_cache.keys())
    for name in ref_cache.keys():
        assert_close(cache[name], ref_cache[name], name)


def zero_head_1(act, hook):
    act[:, :, 1] = 0  # in place, returns None


def mean_over_batch(act, hook):
    return np.broadcast_to(act.mean(0, keepdims=True), act.shape).copy()


def test_zero_and_mean_ablation_equal_transformer_lens(models, tokens):
    hooks = [("blocks.0.attn.hook_z", zero_head_1), ("blocks.1.mlp.hook_post", mean_over_batch)]
    ours_out, ref_out = both_runs(models, tokens[0], hooks)
    assert_runs_equal(ours_out, ref_out)
    assert not np.allclose(ours_out[0], models[0](tokens[0]))  # the hooks changed something


def test_patch_from_cache_at_positions_and_heads(models, tokens):
    ours, _ = models
    clean, corrupted = tokens
    _, clean_cache = ours.run_with_cache(clean)

    def patch_v(act, hook):
        act[:, [2, 5], 3] = clean_cache[hook.name][:, [2, 5], 3]

    def patch_resid(act, hook):
        out = act.copy()
        out[:, 4] = clean_cache[hook.name][:, 4]
        return out

    hooks = [("blocks.1.attn.hook_v", patch_v), ("blocks.1.hook_resid_pre", patch_resid)]
    assert_runs_equal(*both_runs(models, corrupted, hooks))


def test_steering_vector_and_filters(models, tokens):
    vector = np.random.default_rng(0).normal(size=models[0].cfg.d_model).astype(np.float32)
    hooks = [(lambda name: name.endswith("hook_resid_mid"), lambda act, hook: act + (hook.layer() + 1) * vector)]
    assert_runs_equal(*both_runs(models, tokens[0], hooks))


def test_read_only_hooks_store_into_a_dict(models, tokens):
    ours, ref = models
    seen, ref_seen = {}, {}
    ours.run_with_hooks(tokens[0], fwd_hooks=[(lambda n: "pattern" in n, lambda a, hook: seen.update({hook.name: a.copy()}))])
    ref.run_with_hooks(torch.tensor(tokens[0]), fwd_hooks=[
        (lambda n: "pattern" in n, lambda a, hook: ref_seen.update({hook.name: a.clone()}))])
    assert list(seen) == list(ref_seen) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    for name in seen:
        assert_close(seen[name], ref_seen[name], name)


@pytest.mark.parametrize("return_type", ["logits", None])
def test_every_site_hooked_runs_in_transformer_lens_order(models, tokens, return_type):
    ours, ref = models
    order, ref_order = [], []
    logits = ours.run_with_hooks(tokens[0], return_type=return_type,
                                 fwd_hooks=[(lambda n: True, lambda a, hook: order.append(hook.name) or a * 1.01)])
    ref_logits = ref.run_with_hooks(torch.tensor(tokens[0]), return_type=return_type,
                                    fwd_hooks=[(lambda n: True, lambda a, hook: ref_order.append(hook.name) or a * 1.01)])
    # TL runs ln1 three times per block (query, key and value inputs), calling its hooks each time
    assert len(order) == len(set(order)) and order == list(dict.fromkeys(ref_order))
    if return_type is not None:
        assert_close(logits, ref_logits, "logits with every site scaled")


def test_hooks_of_one_site_chain_in_order_and_prepend(models, tokens):
    ours, _ = models
    order = []
    ours.add_hook("blocks.0.hook_mlp_out", lambda a, hook: order.append("a") or a * 2)
    ours.add_hook("blocks.0.hook_mlp_out", lambda a, hook: order.append("b") or a + 1)
    ours.add_hook("blocks.0.hook_mlp_out", lambda a, hook: order.append("first"), prepend=True)
    try:
        _, cache = ours.run_with_cache(tokens[0], names_filter=["blocks.0.hook_mlp_out"])
    finally:
        ours.reset_hooks()
    assert order == ["first", "a", "b"]
    _, clean = ours.run_with_cache(tokens[0], names_filter=["blocks.0.hook_mlp_out"])
    np.testing.assert_allclose(cache["blocks.0.hook_mlp_out"], clean["blocks.0.hook_mlp_out"] * 2 + 1, rtol=1e-6)


def test_permanent_temporary_and_context_hooks(models, tokens):
    ours, _ = models
    base = ours(tokens[0])
    double = lambda a, hook: a * 2
    ours.add_hook("hook_pos_embed", double, is_permanent=True)
    ours.add_hook("blocks.0.hook_attn_out", double)
    with ours.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", double)]):
        assert len(ours.hooked_sites()) == 3
    assert ours.hooked_sites() == ["hook_pos_embed", "blocks.0.hook_attn_out"]  # the context's hook is gone
    ours.run_with_hooks(tokens[0], fwd_hooks=[("blocks.1.hook_mlp_out", double)], reset_hooks_end=False)
    assert len(ours.hooked_sites()) == 3
    ours.reset_hooks()
    assert ours.hooked_sites() == ["hook_pos_embed"]
    assert not np.allclose(ours(tokens[0]), base)
    ours.reset_hooks(including_permanent=True)
    assert ours.hooked_sites() == []
    np.testing.assert_array_equal(ours(tokens[0]), base)


def test_hook_context_dict_and_remove_hook(models, tokens):
    ours, _ = models

    def count(act, hook):
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    ours.add_hook("blocks.1.hook_resid_post", count)
    ours(tokens[0])
    ours(tokens[0])
    assert ours.hook_dict["blocks.1.hook_resid_post"].ctx == {"calls": 2}
    ours.remove_hook("blocks.1.hook_resid_post")
    assert ours.hooked_sites() == []
    ours.clear_contexts()
    assert ours.hook_dict["blocks.1.hook_resid_post"].ctx == {}


def test_one_pass_whatever_the_number_of_hooks(models, tokens):
    ours, _ = models
    sites = [n for n in ours.hook_names if n.endswith(("hook_q", "hook_k", "hook_resid_mid", "hook_scale"))]
    runs = ours.graph.session_runs
    ours.run_with_hooks(tokens[0], fwd_hooks=[(n, lambda a, hook: a) for n in sites])
    plan, _ = compiled_plan(ours.graph, sites, ["logits"])
    assert ours.graph.session_runs - runs == sum(p.model is not None for p in plan.parts) <= len(sites) + 1
    full = specialise(ours.graph.proto, ["logits"])
    want = Counter(n.op_type for n in full.graph.node if n.op_type in COMPUTE_OPS)
    got = Counter(n.op_type for p in plan.parts if p.model for n in p.model.graph.node if n.op_type in COMPUTE_OPS)
    assert got == want and want["MatMul"] + want["Gemm"] > 0  # every matmul once, none repeated


def test_forward_and_loss_honour_hooks(models, tokens):
    ours, ref = models
    hooks = [("blocks.0.hook_resid_post", lambda a, hook: a * 0.5)]
    loss = ours.run_with_hooks(tokens[0], return_type="loss", fwd_hooks=hooks)
    ref_loss = ref.run_with_hooks(torch.tensor(tokens[0]), return_type="loss", fwd_hooks=[(n, for_tl(f)) for n, f in hooks])
    assert_close(loss, ref_loss, "loss")


@pytest.mark.parametrize("start,stop", [(None, 1), (None, 0), (1, None), (0, None), (-1, None), (None, -1), (1, 2)])
def test_start_and_stop_at_layer_equal_transformer_lens(models, tokens, start, stop):
    ours, ref = models
    hooks = [(lambda n: n.endswith("hook_mlp_out") or n == "hook_embed", lambda a, hook: a * 1.5)]
    if start is None:
        args, ref_args = tokens[0], torch.tensor(tokens[0])
    else:
        args = ours(tokens[0], stop_at_layer=start)
        ref_args = ref(torch.tensor(tokens[0]), stop_at_layer=start)
    ours_out = ours.run_with_hooks(args, start_at_layer=start, stop_at_layer=stop, fwd_hooks=hooks)
    ref_out = ref.run_with_hooks(ref_args, start_at_layer=start, stop_at_layer=stop,
                                 fwd_hooks=[(f, for_tl(h)) for f, h in hooks])
    assert_close(ours_out, ref_out, f"start={start} stop={stop}")
    _, cache = ours.run_with_cache(args, start_at_layer=start, stop_at_layer=stop)
    _, ref_cache = ref.run_with_cache(ref_args, start_at_layer=start, stop_at_layer=stop)
    assert list(cache.keys()) == list(ref_cache.keys())


def test_start_and_stop_at_layer_compute_only_their_blocks(models, tokens):
    ours, _ = models
    matmuls = lambda parts: sum(p.node_count(("MatMul", "Gemm")) for p in parts)
    full = matmuls(compiled_plan(ours.graph, [], ["logits"])[0].parts)
    resid_1 = "blocks.0.hook_resid_post"  # the residual stream entering block 1
    stop = matmuls(compiled_plan(ours.graph, [], [resid_1])[0].parts)
    start = matmuls(compiled_plan(ours.graph, [], ["logits"], given=[resid_1])[0].parts)
    assert stop + start == full and 0 < stop < full and 0 < start < full  # each half once, nothing else
    with pytest.raises(ValueError, match="d_model"):
        ours(tokens[0], start_at_layer=1)
    with pytest.raises(ValueError, match="tokens must be passed"):
        ours(ours(tokens[0], stop_at_layer=1), start_at_layer=1, return_type="loss")


def test_errors_name_the_problem(models, tokens):
    ours, _ = models
    with pytest.raises(UnknownHookError, match="blocks.0.attn.hook_q"):
        ours.run_with_hooks(tokens[0], fwd_hooks=[("blocks.0.attn.hook_qq", zero_head_1)])
    with pytest.raises(ValueError, match="matches none"):
        ours.run_with_hooks(tokens[0], fwd_hooks=[(lambda n: n.endswith("hook_nothing"), zero_head_1)])
    with pytest.raises(HookResultError, match=r"blocks.0.hook_resid_pre.*shape \(2, 6, 64\), expected \(2, 7, 64\)"):
        ours.run_with_hooks(tokens[0], fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: a[:, 1:])])
    with pytest.raises(HookResultError, match="dtype float64, expected float32"):
        ours.run_with_hooks(tokens[0], fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: np.zeros(a.shape))])
    with pytest.raises(ValueError, match="bwd_hooks.*scalar metric"):
        ours.run_with_hooks(tokens[0], bwd_hooks=[("blocks.0.hook_resid_pre", zero_head_1)])
    assert ours.hooked_sites() == []  # a failed run leaves no hooks behind
