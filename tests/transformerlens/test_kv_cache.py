"""graphlens.KeyValueCache vs TransformerLens 3.9's HookedTransformerKeyValueCache, same weights.

The behaviours TransformerLens' tests/integration/test_kv_cache.py checks (a prompt then new tokens
equals the full forward; padded batches; freeze/unfreeze; a custom attention mask), each also checked
against TransformerLens running its own KV cache, plus hooks and cached activations while stepping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import TransformerLensKeyValueCache

from graphlens import HookedTransformer, KeyValueCache
from graphlens.errors import InputError
from graphlens.runtime.inputs import attention_mask_for
from tests.models import tl_reference
from tests.test_equivalence import assert_close

ATOL = 1e-4


@pytest.fixture(scope="module")
def models(small_bundle, small_hf):
    ours = HookedTransformer.from_pretrained(small_bundle, default_padding_side="left")
    ref = tl_reference(small_hf)
    ref.tokenizer.padding_side = "left"  # TransformerLens' fixture: from_pretrained(..., default_padding_side="left")
    return ours, ref


def _tl_cache(ref, batch):
    return TransformerLensKeyValueCache.init_cache(ref.cfg, ref.cfg.device, batch)


def test_single_new_token(models):
    ours, ref = models
    pre = ours.to_tokens("When Mary and John went to the store,")
    new = ours.to_tokens(" John", prepend_bos=False)[:, :1]
    full = ours(np.concatenate([pre, new], axis=1))
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, pre.shape[0])
    ours(pre, past_kv_cache=cache)
    stepped = ours(new, past_kv_cache=cache)
    assert stepped.shape == (1, 1, ours.cfg.d_vocab_out)
    np.testing.assert_allclose(stepped, full[:, -1:], atol=ATOL)
    with torch.no_grad():
        tl_cache = _tl_cache(ref, 1)
        ref(torch.tensor(pre), past_kv_cache=tl_cache)
        tl_stepped = ref(torch.tensor(new), past_kv_cache=tl_cache)
    assert_close(stepped, tl_stepped, "logits with a cache")
    for ours_entry, tl_entry in zip(cache.entries, tl_cache.entries):
        assert_close(ours_entry.past_keys, tl_entry.past_keys, "past_keys")
        assert_close(ours_entry.past_values, tl_entry.past_values, "past_values")
    np.testing.assert_array_equal(cache.previous_attention_mask, tl_cache.previous_attention_mask.numpy())


def test_multiple_new_tokens_then_one_at_a_time(models):
    ours, ref = models
    tokens = ours.to_tokens("The quick brown fox jumps over the lazy dog.")
    full = ours(tokens)
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
    pieces = [ours(tokens[:, :5], past_kv_cache=cache), ours(tokens[:, 5:9], past_kv_cache=cache)]
    pieces += [ours(tokens[:, i:i + 1], past_kv_cache=cache) for i in range(9, tokens.shape[1])]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=ATOL)
    assert cache.past_length == tokens.shape[1]
    assert cache[0].past_keys.shape == (1, tokens.shape[1], ours.cfg.n_heads, ours.cfg.d_head)


@pytest.mark.parametrize("pre_padding", ["left", "right", None])
@pytest.mark.parametrize("post_padding", ["left", "right", None])
def test_multi_token_batch(models, pre_padding, post_padding):
    ours, ref = models
    padded_pre, padded_post = ["The quick", "When Mary and John went"], [" to the store", " gave a drink to Mary."]
    unpadded_pre, unpadded_post = [padded_pre[0]] * 2, [padded_post[0]] * 2  # rows of equal length
    first_post = ours.to_tokens(padded_post[0], prepend_bos=False)
    expected = ours(np.concatenate([ours.to_tokens(padded_pre[0]), first_post], axis=1))[0, -first_post.shape[1]:]

    pre = (ours.to_tokens(unpadded_pre) if pre_padding is None
           else ours.to_tokens(padded_pre, padding_side=pre_padding))
    post = (ours.to_tokens(unpadded_post, prepend_bos=False) if post_padding is None
            else ours.to_tokens(padded_post, prepend_bos=False, padding_side=post_padding))
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 2)
    ours(pre, past_kv_cache=cache, padding_side=pre_padding)
    cache.freeze()
    logits = ours(post, past_kv_cache=cache, padding_side=post_padding, prepend_bos=False)
    first = logits[0, :first_post.shape[1]] if post_padding == "right" else logits[0, -first_post.shape[1]:]
    np.testing.assert_allclose(_softmax(first), _softmax(expected), atol=ATOL)  # padding changes nothing

    with torch.no_grad():
        tl_cache = _tl_cache(ref, 2)
        ref(torch.tensor(pre), past_kv_cache=tl_cache, padding_side=pre_padding)
        tl_cache.freeze()
        tl_logits = ref(torch.tensor(post), past_kv_cache=tl_cache, padding_side=post_padding, prepend_bos=False)
    real = attention_mask_for(post, ours.tokenizer.pad_token_id, ours.tokenizer.bos_token_id, False,
                              post_padding or "left").astype(bool)
    assert_close(logits[real], tl_logits.numpy()[real], "logits of the real tokens")


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_freeze_and_unfreeze(models):
    ours, _ = models
    pre = ours.to_tokens("The quick")
    new_1 = ours.to_tokens(" to the store", prepend_bos=False)
    new_2 = ours.to_tokens(" Hello", prepend_bos=False)
    cache_1, cache_2 = (KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1) for _ in range(2))
    ours(pre, past_kv_cache=cache_1)
    cache_1.freeze()
    logits_1 = ours(new_1, past_kv_cache=cache_1)
    ours(pre, past_kv_cache=cache_2)
    cache_2.freeze()
    ours(new_2, past_kv_cache=cache_2)
    assert cache_1.frozen and cache_2.frozen
    for a, b in zip(cache_1.entries, cache_2.entries):  # frozen at the same point: identical
        assert a.past_keys.shape == b.past_keys.shape == (1, pre.shape[1], ours.cfg.n_heads, ours.cfg.d_head)
        np.testing.assert_array_equal(a.past_keys, b.past_keys)
        np.testing.assert_array_equal(a.past_values, b.past_values)
    assert cache_1.previous_attention_mask.shape == (1, pre.shape[1])
    np.testing.assert_allclose(ours(new_1, past_kv_cache=cache_2), logits_1, atol=ATOL)
    cache_2.unfreeze()
    again = ours(new_1, past_kv_cache=cache_2)
    np.testing.assert_allclose(again, logits_1, atol=ATOL)
    for a, b in zip(cache_1.entries, cache_2.entries):
        assert a.past_keys.shape[1] < b.past_keys.shape[1]
    assert not np.allclose(ours(new_1, past_kv_cache=cache_2), logits_1, atol=ATOL)  # now it reads new_1 twice


def test_custom_attention_mask(models):
    ours, ref = models
    pre = ours.to_tokens("The quick")
    parts = [ours.to_tokens(text, prepend_bos=False) for text in (" brown", " junk", " fox")]
    post = np.concatenate(parts, axis=1)
    mask = np.concatenate([np.ones_like(parts[0]), np.zeros_like(parts[1]), np.ones_like(parts[2])], axis=1)
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
    ours(pre, past_kv_cache=cache)
    logits = ours(post, attention_mask=mask, past_kv_cache=cache)
    with torch.no_grad():
        tl_cache = _tl_cache(ref, 1)
        ref(torch.tensor(pre), past_kv_cache=tl_cache)
        tl_logits = ref(torch.tensor(post), attention_mask=torch.tensor(mask), past_kv_cache=tl_cache)
    assert_close(logits, tl_logits, "logits with a custom mask")
    whole = np.concatenate([pre, parts[0], parts[2]], axis=1)  # the masked tokens are as if absent
    np.testing.assert_allclose(logits[:, -1], ours(whole)[:, -1], atol=ATOL)
    np.testing.assert_array_equal(cache.previous_attention_mask, np.concatenate([np.ones_like(pre), mask], axis=1))


def test_hooks_and_cached_activations_while_stepping(models):
    ours, ref = models
    tokens = ours.to_tokens("When Mary and John went to the store, John gave")
    names = ["hook_embed", "hook_pos_embed", "blocks.0.attn.hook_k", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post",
             "blocks.1.attn.hook_pattern"]
    full_logits, full = ours.run_with_cache(tokens, names_filter=names)
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
    split = 6
    _, first = ours.run_with_cache(tokens[:, :split], names_filter=names, past_kv_cache=cache)
    logits, second = ours.run_with_cache(tokens[:, split:], names_filter=names, past_kv_cache=cache)
    np.testing.assert_allclose(logits, full_logits[:, split:], atol=ATOL)
    for name in names:
        if "pattern" in name:  # keys: every position so far
            np.testing.assert_allclose(second[name], full[name][:, :, split:], atol=ATOL)
            np.testing.assert_allclose(first[name], full[name][:, :, :split, :split], atol=ATOL)
        else:
            np.testing.assert_allclose(np.concatenate([first[name], second[name]], axis=1), full[name], atol=ATOL)

    def ablate(z, hook):
        z[:, :, 2] = 0.0

    hooks = [("blocks.1.attn.hook_z", ablate)]
    expected = ours.run_with_hooks(tokens, fwd_hooks=hooks)
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
    with ours.hooks(fwd_hooks=hooks):
        stepped = [ours(tokens[:, :split], past_kv_cache=cache)]
        stepped += [ours(tokens[:, i:i + 1], past_kv_cache=cache) for i in range(split, tokens.shape[1])]
    np.testing.assert_allclose(np.concatenate(stepped, axis=1), expected, atol=ATOL)
    with torch.no_grad():
        tl_cache = _tl_cache(ref, 1)
        with ref.hooks(fwd_hooks=[("blocks.1.attn.hook_z", ablate)]):
            ref(torch.tensor(tokens[:, :split]), past_kv_cache=tl_cache)
            tl_last = ref(torch.tensor(tokens[:, split:]), past_kv_cache=tl_cache)
    assert_close(np.concatenate(stepped, axis=1)[:, split:], tl_last, "hooked steps")


def test_loss_with_a_cache(models):
    """TransformerLens 3.9 raises here (it passes the past+new mask to the loss); graphlens gives the
    loss over the new tokens, checked against TL's loss function on TL's full-forward logits."""
    from transformer_lens.utils import lm_cross_entropy_loss

    ours, ref = models
    tokens = ours.to_tokens("The quick brown fox jumps")
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
    ours(tokens[:, :4], past_kv_cache=cache)
    loss = ours(tokens[:, 4:], return_type="loss", past_kv_cache=cache)
    with torch.no_grad():
        tl_logits = ref(torch.tensor(tokens))
        tl_loss = lm_cross_entropy_loss(tl_logits[:, 4:], torch.tensor(tokens[:, 4:]))
    assert_close(loss, tl_loss, "loss over the new tokens")


def test_bad_uses_are_clear_errors(models):
    ours, _ = models
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 2)
    with pytest.raises(InputError, match="batch size 2"):
        ours(np.array([[1, 2, 3]]), past_kv_cache=cache)
    with pytest.raises(InputError, match="KeyValueCache"):
        ours(np.array([[1, 2, 3]]), past_kv_cache={"not": "a cache"})
    ours(np.ones((2, 20), dtype=np.int64), past_kv_cache=cache)
    with pytest.raises(InputError, match="exceed n_ctx"):
        ours(np.ones((2, ours.cfg.n_ctx - 19), dtype=np.int64), past_kv_cache=cache)
    with pytest.raises(InputError, match="positive"):
        KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 0)
    with pytest.raises(InputError, match="start_at_layer"):
        ours(np.zeros((2, 3, ours.cfg.d_model), np.float32), start_at_layer=1, attention_mask=np.ones((2, 5)),
             past_kv_cache=cache)


def test_kv_cache_and_start_at_layer(models):
    ours, ref = models
    pre = ours.to_tokens("When Mary and John went")
    new = ours.to_tokens(" to", prepend_bos=False)
    full = ours(np.concatenate([pre, new], axis=1))
    cache = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
    ours(pre, past_kv_cache=cache)
    cache.freeze()
    stopped, partial = ours.run_with_cache(new, stop_at_layer=2, past_kv_cache=cache)
    resid_1 = partial["blocks.1.hook_resid_pre"]
    np.testing.assert_allclose(stopped, ours(new, stop_at_layer=2, past_kv_cache=cache), atol=1e-6)
    mask = np.concatenate([cache.previous_attention_mask, np.ones_like(new)], axis=1)  # as TL's input_to_embed gives
    logits = ours(resid_1, start_at_layer=1, tokens=new, attention_mask=mask, past_kv_cache=cache)
    np.testing.assert_allclose(logits[:, -1], full[:, -1], atol=ATOL)
    np.testing.assert_allclose(logits, full[:, -new.shape[1]:], atol=ATOL)
    with torch.no_grad():
        tl_cache = _tl_cache(ref, 1)
        ref(torch.tensor(pre), past_kv_cache=tl_cache)
        tl_cache.freeze()
        _, toks, _, tl_mask = ref.input_to_embed(torch.tensor(new), past_kv_cache=tl_cache)
        _, tl_partial = ref.run_with_cache(torch.tensor(new), stop_at_layer=2, past_kv_cache=tl_cache)
        tl_logits = ref(tl_partial["blocks.1.hook_resid_pre"], start_at_layer=1, tokens=toks, attention_mask=tl_mask,
                        past_kv_cache=tl_cache)
    np.testing.assert_array_equal(mask, tl_mask.numpy())
    for name in tl_partial.keys():
        assert_close(partial[name], tl_partial[name], name)
    assert_close(logits, tl_logits, "logits from start_at_layer with a cache")
    # unfrozen, only the blocks that run take the new keys (as TransformerLens)
    cache.unfreeze()
    ours(new, stop_at_layer=1, past_kv_cache=cache)
    assert [entry.past_keys.shape[1] for entry in cache.entries] == [pre.shape[1] + new.shape[1], pre.shape[1]]
    with pytest.raises(InputError, match="different lengths"):
        ours(new, past_kv_cache=cache)
