"""The rest of TransformerLens' model API graphlens matches, against TransformerLens 3.9 on the same weights:
from_pretrained's defaults and refactor_factored_attn_matrices, to_single_str_token, utils.test_prompt,
generate's HF kwargs, and the device methods."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from graphlens import HookedTransformer, KeyValueCache
from graphlens.errors import DeviceError, InputError
from graphlens.utils import test_prompt
from tests.models import tl_reference
from tests.test_equivalence import assert_close

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_default_padding_side_and_prepend_bos(small_bundle, small_hf):
    prompts = ["Hello world", "When Mary and John went"]
    ours = HookedTransformer.from_pretrained(small_bundle, default_padding_side="left", default_prepend_bos=False)
    ref = tl_reference(small_hf)
    ref.tokenizer.padding_side, ref.cfg.default_prepend_bos = "left", False
    assert ours.tokenizer.padding_side == "left" and ours.cfg.default_prepend_bos is False
    np.testing.assert_array_equal(ours.to_tokens(prompts), ref.to_tokens(prompts).numpy())
    assert ours.to_str_tokens(prompts[1]) == ref.to_str_tokens(prompts[1])
    with torch.no_grad():
        assert_close(ours(prompts[1]), ref(prompts[1]), "logits without BOS")
    with pytest.raises(InputError, match="default_padding_side"):
        HookedTransformer.from_pretrained(small_bundle, default_padding_side="middle")


@pytest.mark.parametrize("processed_bundle", [True, False], ids=["processed-bundle", "raw-bundle"])
def test_refactor_factored_attn_matrices(gpt2_bundles, small_hf, processed_bundle):
    ours = HookedTransformer.from_pretrained(gpt2_bundles["small", processed_bundle], refactor_factored_attn_matrices=True)
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    ref = tl_reference(small_hf, processing=False)  # TL's from_pretrained defaults, plus the refactoring
    ref.load_and_process_state_dict(
        convert_gpt2_weights(GPT2LMHeadModel.from_pretrained(small_hf), ref.cfg), fold_ln=True,
        center_writing_weights=True, center_unembed=True, fold_value_biases=True, refactor_factored_attn_matrices=True)
    tokens = np.random.default_rng(0).integers(0, ours.cfg.d_vocab, size=(2, 8))
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
    logits, cache = ours.run_with_cache(tokens)
    assert_close(logits, ref_logits, "logits")
    for name in ("blocks.0.attn.hook_pattern", "blocks.1.attn.hook_attn_scores", "blocks.1.hook_attn_out"):
        assert_close(cache[name], ref_cache[name], name)
    np.testing.assert_allclose(ours.QK.AB, ref.QK.AB.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.OV.AB, ref.OV.AB.detach().numpy(), atol=1e-4)
    # the same factors as TransformerLens' up to the sign of each singular direction
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        np.testing.assert_allclose(np.abs(getattr(ours, name)), np.abs(getattr(ref, name).detach().numpy()), atol=1e-4,
                                   err_msg=name)
    eye = np.broadcast_to(np.eye(ours.cfg.d_head), ours.W_O.shape[:2] + (ours.cfg.d_head,) * 2)
    np.testing.assert_allclose(ours.W_O @ np.swapaxes(ours.W_O, -1, -2), eye, atol=1e-5)  # W_O is a rotation
    np.testing.assert_array_equal(ours.b_V, 0)
    assert ours.manifest["processing"]["refactor_factored_attn_matrices"] is True
    # the decoder graph generation runs gets the same weights
    with torch.no_grad():
        ref_out = ref.generate(torch.tensor(tokens[:1]), max_new_tokens=4, do_sample=False, verbose=False)
    np.testing.assert_array_equal(ours.generate(tokens[:1], max_new_tokens=4, do_sample=False, verbose=False),
                                  ref_out.numpy())


def test_to_single_str_token(small_bundle, small_hf):
    ours, ref = HookedTransformer.from_pretrained(small_bundle), tl_reference(small_hf)
    for token in (0, 5, 123, ours.cfg.d_vocab - 1):
        assert ours.to_single_str_token(token) == ref.to_single_str_token(token)
    with pytest.raises(InputError):
        ours.to_single_str_token("a")


@pytest.mark.parametrize("answer", ["fox", [" fox", " dog", "store"]], ids=["one", "several"])
def test_test_prompt_prints_transformer_lens_table(small_bundle, small_hf, capsys, monkeypatch, answer):
    from transformer_lens.utils import test_prompt as tl_test_prompt

    monkeypatch.setenv("COLUMNS", "400")  # TransformerLens prints through rich, which wraps at the width
    ours, ref = HookedTransformer.from_pretrained(small_bundle), tl_reference(small_hf)
    test_prompt("The quick brown", answer, ours, top_k=4)
    printed = capsys.readouterr().out
    with torch.no_grad():
        tl_test_prompt("The quick brown", answer, ref, top_k=4)
    expected = capsys.readouterr().out
    assert printed.split() == expected.split()  # the same table (whitespace aside: rich may wrap)
    assert "Ranks of the answer tokens:" in printed and printed.count("Top 0th token") >= 1


def test_generate_warns_about_hf_kwargs_and_ignores_them(small_bundle, small_hf):
    ours, ref = HookedTransformer.from_pretrained(small_bundle), tl_reference(small_hf)
    tokens = np.array([[3, 17, 42, 5]])
    plain = ours.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False)
    with pytest.warns(UserWarning, match="unsupported generation kwargs; ignoring: \\['num_beams'\\]"):
        out = ours.generate(tokens, max_new_tokens=4, do_sample=False, verbose=False, num_beams=4,
                            return_dict_in_generate=True)
    with pytest.warns(UserWarning, match="unsupported generation kwargs"), torch.no_grad():
        ref_out = ref.generate(torch.tensor(tokens), max_new_tokens=4, do_sample=False, verbose=False, num_beams=4)
    np.testing.assert_array_equal(out, plain)
    np.testing.assert_array_equal(out, ref_out.numpy())


def test_device_methods(small_bundle):
    ours = HookedTransformer.from_pretrained(small_bundle, device="cpu")
    tokens = np.array([[1, 2, 3, 4]])
    expected = ours(tokens)
    session = ours.graph.session(["logits"])
    assert ours.eval() is ours and ours.cpu() is ours and ours.to("cpu") is ours and ours.to("float32") is ours
    assert ours.graph.session(["logits"]) is session  # a no-op move keeps the sessions
    with pytest.raises(InputError, match="float16"):
        ours.to("float16")
    with pytest.raises(InputError, match="inference only"):
        ours.train()
    _, cache = ours.run_with_cache(tokens)
    assert cache.to("cpu") is cache
    if HAS_CUDA:
        ours.cuda()
        assert ours.cfg.device == "cuda" and ours.graph.session(["logits"]) is not session
        np.testing.assert_allclose(ours(tokens), expected, atol=1e-4)
        kv = KeyValueCache.init_cache(ours.cfg, ours.cfg.device, 1)
        np.testing.assert_allclose(ours(tokens, past_kv_cache=kv), expected, atol=1e-4)
        ours.cpu()
        np.testing.assert_allclose(ours(tokens), expected, atol=1e-4)
    else:
        for move in (ours.cuda, lambda: ours.to("cuda"), lambda: cache.to("cuda"),
                     lambda: KeyValueCache.init_cache(ours.cfg, "cuda", 1)):
            with pytest.raises(DeviceError, match="onnxruntime-gpu"):
                move()
        assert ours.cfg.device == "cpu"
        np.testing.assert_array_equal(ours(tokens), expected)
    with pytest.raises(DeviceError, match="unknown device"):
        ours.to("tpu")
