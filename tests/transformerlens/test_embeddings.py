"""Embeddings in and out, against TransformerLens 3.9: ``embed``, ``input_to_embed``, ``get_residual``,
``forward(residual, start_at_layer=0)``, ``generate`` from embeddings, ``return_type="embeds"``, ``output_logits``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphlens import HookedTransformer
from graphlens.errors import InputError
from graphlens.runtime.generation import GenerateOutput
from tests.models import tl_reference, tl_reference_from_folder
from tests.test_equivalence import assert_close
from tests.transformerlens.test_padding import left_padded

GREEDY = dict(do_sample=False, stop_at_eos=False, verbose=False)


@pytest.fixture(scope="module")
def gpt2(small_bundle, small_hf):
    return HookedTransformer.from_pretrained(small_bundle), tl_reference(small_hf)


def _tokens(seed=0, shape=(2, 6)):
    return np.random.default_rng(seed).integers(1, 300, size=shape)


def test_embed_input_to_embed_and_get_residual_equal_transformer_lens(gpt2):
    ours, ref = gpt2
    tokens = left_padded(seed=1)
    with torch.no_grad():
        ref_embed = ref.embed(torch.tensor(tokens))
        ref_plain = ref.input_to_embed(torch.tensor(tokens))
        ref.tokenizer.padding_side = "left"  # TL's input_to_embed masks by the tokenizer's side (padding_side: strings)
        ref_residual, ref_tokens, ref_short, ref_mask = ref.input_to_embed(torch.tensor(tokens))
        ref.tokenizer.padding_side = "right"
        ref_offset, _ = ref.get_residual(ref_embed, 2)
        full_mask = torch.ones(3, 2 + tokens.shape[1], dtype=torch.long)
        full_mask[0, :5] = 0
        ref_masked, _ = ref.get_residual(ref_embed, 2, attention_mask=full_mask)
    assert_close(ours.embed(tokens), ref_embed, "embed")
    ours.tokenizer.padding_side = "left"
    residual, out_tokens, short, mask = ours.input_to_embed(tokens)
    ours.tokenizer.padding_side = "right"
    assert_close(residual, ref_residual, "input_to_embed residual")
    np.testing.assert_array_equal(out_tokens, ref_tokens.numpy())
    np.testing.assert_array_equal(mask, ref_mask.numpy())
    assert short is None and ref_short is None
    plain = ours.input_to_embed(tokens)
    assert plain[3] is None and ref_plain[3] is None  # right padding side: no mask, as TL
    assert_close(plain[0], ref_plain[0], "input_to_embed, no mask")
    assert_close(ours.get_residual(ours.embed(tokens), 2)[0], ref_offset, "get_residual, pos_offset 2")
    assert_close(ours.get_residual(ours.embed(tokens), 2, attention_mask=full_mask.numpy())[0], ref_masked,
                 "get_residual with a mask")
    assert_close(ours.get_residual(ours.embed(tokens), return_shortformer_pos_embed=False),
                 ref_plain[0], "get_residual alone")


def test_forward_from_embeddings_at_layer_0(gpt2):
    """TransformerLens takes the residual stream (embeddings + positions) with start_at_layer=0."""
    ours, ref = gpt2
    tokens = left_padded(seed=2)
    residual = ours(tokens, padding_side="left", stop_at_layer=0)
    mask = ours.padding_mask(tokens, padding_side="left")
    with torch.no_grad():
        ref_logits = ref(torch.tensor(residual), start_at_layer=0, attention_mask=torch.tensor(mask))
        ref_loss = ref(torch.tensor(residual), start_at_layer=0, attention_mask=torch.tensor(mask),
                       tokens=torch.tensor(tokens), return_type="loss")
    logits = ours(residual, start_at_layer=0, attention_mask=mask)
    assert_close(logits, ref_logits, "logits from embeddings")
    np.testing.assert_array_equal(logits, ours(tokens, padding_side="left"))
    assert_close(ours(residual, start_at_layer=0, attention_mask=mask, tokens=tokens, return_type="loss"), ref_loss, "loss")
    _, cache = ours.run_with_cache(residual, start_at_layer=0, attention_mask=mask)
    assert "hook_embed" not in cache and "blocks.0.hook_resid_pre" in cache
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_pre"], residual)


@pytest.mark.parametrize("use_past_kv_cache", [True, False])
def test_generate_from_embeddings_equals_transformer_lens(gpt2, use_past_kv_cache):
    ours, ref = gpt2
    tokens = _tokens(3)
    embeds = ours.embed(tokens)
    kwargs = dict(GREEDY, max_new_tokens=4, use_past_kv_cache=use_past_kv_cache)
    with torch.no_grad():
        ref_embeds = ref.generate(torch.tensor(embeds), **kwargs)
        ref_new = ref.generate(torch.tensor(embeds), return_type="tokens", **kwargs)
        ref_from_tokens = ref.generate(torch.tensor(tokens), return_type="embeds", **kwargs)
    out = ours.generate(embeds, **kwargs)  # return_type "input": embeddings in, embeddings out
    assert out.shape == (2, 10, ours.cfg.d_model)
    assert_close(out, ref_embeds, "generated embeddings")
    new = ours.generate(embeds, return_type="tokens", **kwargs)
    np.testing.assert_array_equal(new, ref_new.numpy())  # only the new tokens, as TL
    np.testing.assert_array_equal(new, ours.generate(tokens, **kwargs)[:, 6:])
    assert_close(ours.generate(tokens, return_type="embeds", **kwargs), ref_from_tokens, "embeds from tokens")
    assert isinstance(ours.generate(embeds[:1], return_type="str", **kwargs), str)


def test_generate_output_logits_equals_transformer_lens(gpt2):
    ours, ref = gpt2
    tokens = _tokens(4)
    with torch.no_grad():
        ref_out = ref.generate(torch.tensor(tokens), max_new_tokens=3, output_logits=True, **GREEDY)
    out = ours.generate(tokens, max_new_tokens=3, output_logits=True, **GREEDY)
    assert isinstance(out, GenerateOutput)
    np.testing.assert_array_equal(out.sequences, ref_out.sequences.numpy())
    np.testing.assert_array_equal(out["sequences"], out.sequences)
    assert len(out.logits) == len(ref_out.logits) == 3
    for step, (got, want) in enumerate(zip(out.logits, ref_out.logits)):
        assert_close(got, want, f"logits of step {step}")


def test_rotary_family_from_embeddings(family_bundle, family_hf):
    """Rotary models add no positional embedding: get_residual is the identity, start_at_layer=0 as TL."""
    ours = HookedTransformer.from_pretrained(family_bundle["rms-gqa"])
    ref = tl_reference_from_folder(family_hf["rms-gqa"])
    tokens = left_padded(seed=6)
    embeds = ours.embed(tokens)
    np.testing.assert_array_equal(ours.get_residual(embeds)[0], embeds)
    residual, mask = ours(tokens, padding_side="left", stop_at_layer=0), ours.padding_mask(tokens, padding_side="left")
    with torch.no_grad():
        ref_residual = ref(torch.tensor(tokens), padding_side="left", stop_at_layer=0)
        ref_logits = ref(ref_residual, start_at_layer=0, attention_mask=torch.tensor(mask))
    assert_close(residual, ref_residual, "residual")
    assert_close(ours(residual, start_at_layer=0, attention_mask=mask), ref_logits, "logits")


def test_bad_embeddings_are_refused(gpt2):
    ours, _ = gpt2
    with pytest.raises(InputError, match="d_model"):
        ours.generate(np.zeros((1, 3, 5), np.float32), max_new_tokens=1, verbose=False)
    with pytest.raises(TypeError):
        ours.get_residual(np.zeros((1, 3), np.int64))
