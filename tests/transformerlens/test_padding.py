"""Left padding and ``attention_mask`` in forward / run_with_cache / loss / hooks / patching, against TransformerLens 3.9.

TransformerLens masks padded keys and counts positions from each row's first real token
(``utils.get_attention_mask``, ``get_offset_position_ids``) whenever the padding side is left or a
mask is passed. Every family is checked on a left-padded batch: every cached hook (pattern 0 and
scores -inf at pads), logits and the masked loss.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import transformer_lens.patching as tl_patching
from graphlens import HookedTransformer, patching
from graphlens.errors import InputError
from tests.models import tl_reference, tl_reference_from_folder
from tests.test_architectures import FAMILIES, as_graphlens_shape
from tests.test_equivalence import assert_close

PAD = 0  # the test tokenizers' <|endoftext|>: pad, BOS and EOS
ALL = ["gpt2", *FAMILIES]


def left_padded(seed: int = 0, pads=(4, 0, 2), pos: int = 10) -> np.ndarray:
    """A batch with ``pads[i]`` leading pads in row i, then BOS, then random tokens."""
    tokens = np.random.default_rng(seed).integers(1, 300, size=(len(pads), pos))
    for row, n in enumerate(pads):
        tokens[row, :n + 1] = PAD
    return tokens


@pytest.fixture(scope="module")
def models(family_bundle, family_hf, small_bundle, small_hf):
    """family → (graphlens model with default processing, TransformerLens 3.9 from the same weights), lazily."""
    cache = {}

    def get(family):
        if family not in cache:
            if family == "gpt2":
                cache[family] = HookedTransformer.from_pretrained(small_bundle), tl_reference(small_hf)
            else:
                cache[family] = (HookedTransformer.from_pretrained(family_bundle[family]),
                                 tl_reference_from_folder(family_hf[family]))
        return cache[family]

    return get


@pytest.mark.parametrize("family", ALL)
def test_left_padded_batch_every_hook_logits_and_loss_equal_transformer_lens(models, family):
    ours, ref = models(family)
    tokens = left_padded()
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens), padding_side="left")
        ref_loss = ref(torch.tensor(tokens), padding_side="left", return_type="loss")
        ref_token_loss = ref(torch.tensor(tokens), padding_side="left", return_type="loss", loss_per_token=True)
    logits, cache = ours.run_with_cache(tokens, padding_side="left")
    assert list(cache.keys()) == list(ref_cache.keys())
    pads = np.cumsum(tokens != PAD, axis=1) == 0  # the leading pads and the BOS (all PAD tokens)
    for name in ref_cache.keys():
        ref_value = as_graphlens_shape(ref_cache[name], name, cache[name].shape).numpy()
        if ours.cfg.use_qk_norm and any(s in name for s in ("_norm.hook_normalized", "hook_rot_q", "hook_rot_k")):
            # q/k norms: at a pad position the random model's key is ~0 (hook_scale = sqrt(eps)), so dividing by
            # it amplifies float error ~300x; those positions are never attended: compare the real ones
            assert_close(cache[name][~pads], ref_value[~pads], name)
        else:
            assert_close(cache[name], ref_value, name)  # -inf too
    assert_close(logits, ref_logits, "logits")
    assert_close(ours(tokens, padding_side="left", return_type="loss"), ref_loss, "loss")
    assert_close(ours(tokens, padding_side="left", return_type="loss", loss_per_token=True), ref_token_loss, "loss/token")
    # row 0 has 4 pads: nobody attends to them, and the padded query rows attend nowhere
    for layer in range(ours.cfg.n_layers):
        pattern, scores = cache["pattern", layer], cache["attn_scores", layer]
        assert np.all(pattern[0, :, :, :4] == 0) and np.all(np.isneginf(scores[0, :, :, :4]))
        assert np.all(pattern[0, :, :4] == 0)
    unmasked = ours(tokens)  # right padding side (the tokenizer's default): nothing is masked, as TL
    with torch.no_grad():
        assert_close(unmasked, ref(torch.tensor(tokens)), "logits, right padding side")
    assert np.abs(unmasked[0] - logits[0]).max() > 1e-3


@pytest.mark.parametrize("family", ALL)
def test_padded_row_equals_the_prompt_alone(models, family):
    ours, _ = models(family)
    tokens = left_padded(seed=1)
    padded = ours(tokens, padding_side="left")
    # the BOS (== pad) counts as real only where the model prepends BOS by default (TL's get_attention_mask)
    starts = ours.padding_mask(tokens, padding_side="left").argmax(1)
    assert list(starts) == ([4, 0, 2] if ours.cfg.default_prepend_bos else [5, 1, 3])
    for row, start in enumerate(starts):
        alone = ours(tokens[row:row + 1, start:])
        np.testing.assert_allclose(padded[row, start:], alone[0], atol=2e-5, rtol=0, err_msg=f"row {row}")


@pytest.mark.parametrize("family", ["gpt2", "rms-gqa", "gm2"])
def test_explicit_attention_mask_equals_transformer_lens(models, family):
    """``forward(tokens, attention_mask=m)`` masks whatever m says, also with start_at_layer, as TL."""
    ours, ref = models(family)
    tokens = np.random.default_rng(2).integers(1, 300, size=(2, 9))
    mask = np.ones_like(tokens)
    mask[0, :3] = 0
    mask[1, :1] = 0
    with torch.no_grad():
        ref_logits = ref(torch.tensor(tokens), attention_mask=torch.tensor(mask))
        ref_loss = ref(torch.tensor(tokens), attention_mask=torch.tensor(mask), return_type="loss")
        ref_resid = ref(torch.tensor(tokens), attention_mask=torch.tensor(mask), stop_at_layer=1)
        ref_rest = ref(ref_resid, start_at_layer=1, attention_mask=torch.tensor(mask))
    assert_close(ours(tokens, attention_mask=mask), ref_logits, "logits")
    assert_close(ours(tokens, attention_mask=mask.astype(bool), return_type="loss"), ref_loss, "loss")
    resid = ours(tokens, attention_mask=mask, stop_at_layer=1)
    assert_close(resid, ref_resid, "resid before block 1")
    assert_close(ours(resid, start_at_layer=1, attention_mask=mask), ref_rest, "logits from block 1")
    _, cache = ours.run_with_cache(tokens, attention_mask=mask, names_filter="blocks.1.hook_resid_pre")
    np.testing.assert_array_equal(cache["blocks.1.hook_resid_pre"], resid)
    with pytest.raises(InputError, match="attention_mask"):
        ours(tokens, attention_mask=mask[:, :4])
    with pytest.raises(InputError, match="0 .padding."):
        ours(tokens, attention_mask=mask * 2)


@pytest.mark.parametrize("family", ["gpt2", "neox", "opt"])
def test_hooks_on_a_left_padded_batch_equal_transformer_lens(models, family):
    """run_with_hooks cuts the graph at the hooked sites: every part reads the padding mask."""
    ours, ref = models(family)
    tokens = left_padded(seed=3)
    vector = np.random.default_rng(0).normal(size=ours.cfg.d_model).astype(np.float32)
    site = "blocks.1.hook_resid_pre"
    logits = ours.run_with_hooks(tokens, padding_side="left", fwd_hooks=[(site, lambda a, hook: a + vector)])
    with torch.no_grad():
        ref_logits = ref.run_with_hooks(torch.tensor(tokens), padding_side="left",
                                        fwd_hooks=[(site, lambda a, hook: a + torch.tensor(vector))])
    assert_close(logits, ref_logits, "logits with a hook")
    with ours.hooks(fwd_hooks=[(site, lambda a, hook: a + vector)]):
        hooked_logits, cache = ours.run_with_cache(tokens, padding_side="left")
    assert_close(hooked_logits, ref_logits, "run_with_cache under hooks")
    assert np.all(cache["pattern", 1][0, :, :, :4] == 0)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_patching_sweep_on_left_padded_tokens_equals_transformer_lens(models, family):
    """With a left-padding tokenizer, TL's patching runs masked forwards; so does the graphlens sweep."""
    ours, ref = models(family)
    corrupted, clean = left_padded(seed=4, pads=(3, 0)), left_padded(seed=5, pads=(3, 0))
    ours.tokenizer.padding_side = ref.tokenizer.padding_side = "left"
    try:
        _, clean_cache = ours.run_with_cache(clean)
        with torch.no_grad():
            _, ref_cache = ref.run_with_cache(torch.tensor(clean))

        def metric(logits):
            return (logits[:, -1, 11] - logits[:, -1, 42]).mean()

        for name in ("get_act_patch_resid_pre", "get_act_patch_attn_head_out_all_pos"):
            got = getattr(patching, name)(ours, corrupted, clean_cache, metric, progress=False)
            with torch.no_grad():
                want = getattr(tl_patching, name)(ref, torch.tensor(corrupted), ref_cache, metric).numpy()
            np.testing.assert_allclose(got, want, atol=1e-4 * (1 + np.abs(want).max()), rtol=0, err_msg=name)
    finally:
        ours.tokenizer.padding_side = ref.tokenizer.padding_side = "right"


def test_plain_onnx_runtime_feeds_and_manifest_inputs(models, small_bundle):
    """model.onnx runs on input_ids alone; attention_mask (and position_ids) are optional graph inputs."""
    ours, ref = models("gpt2")
    manifest = json.loads((small_bundle / "graphlens.json").read_text())
    inputs = {entry["name"]: entry for entry in manifest["inputs"]}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["attention_mask"]["dtype"] == inputs["position_ids"]["dtype"] == "int64"
    assert inputs["attention_mask"]["shape"] == ["batch", "pos"]
    assert inputs["attention_mask"]["default"] == {"shape": [1, 1], "fill": 1}
    assert inputs["position_ids"]["default"] == {"shape": [1, 1], "fill": -1}
    assert inputs["attention_mask"]["required"] is inputs["position_ids"]["required"] is False
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(small_bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    tokens = left_padded(seed=6)
    mask = ours.padding_mask(tokens, padding_side="left")
    (plain,) = session.run(["logits"], {"input_ids": tokens})
    (masked,) = session.run(["logits"], {"input_ids": tokens, "attention_mask": mask})
    with torch.no_grad():
        assert_close(plain, ref(torch.tensor(tokens)), "logits, input_ids only")
        assert_close(masked, ref(torch.tensor(tokens), padding_side="left"), "logits, attention_mask fed")
    # explicit positions override the derived ones: positions counted from the start give the unmasked positions
    (positions_fed,) = session.run(["hook_pos_embed"], {
        "input_ids": tokens, "attention_mask": mask, "position_ids": np.arange(tokens.shape[1])[None].repeat(3, 0)})
    (derived,) = session.run(["hook_pos_embed"], {"input_ids": tokens, "attention_mask": mask})
    (unpadded,) = session.run(["hook_pos_embed"], {"input_ids": tokens})
    np.testing.assert_array_equal(positions_fed[mask.astype(bool)], unpadded[mask.astype(bool)])
    assert not np.array_equal(derived[0], unpadded[0])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_onnx_runtime_on_input_ids_alone_equals_hf(family_bundle, family_hf, family):
    """Every family's model.onnx runs in plain ONNX Runtime on ``input_ids`` alone (the mask inputs' [1, 1]
    defaults), with HF's logits: the defaults' symbolic dims must not claim to be ``[batch, pos]``."""
    from transformers import AutoModelForCausalLM

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(family_bundle[family] / "model.onnx"), options, providers=["CPUExecutionProvider"])
    tokens = np.random.default_rng(7).integers(1, 300, size=(2, 9))
    (logits,) = session.run(["logits"], {"input_ids": tokens})
    hf = AutoModelForCausalLM.from_pretrained(family_hf[family], attn_implementation="eager").eval()
    with torch.no_grad():
        assert_close(logits, hf(torch.tensor(tokens)).logits, f"{family}: logits on input_ids alone")
