"""Model families beyond GPT-2 against TransformerLens 3.9: every hook, logits, loss, config, patching.

One tiny random model per family (norm weights and biases perturbed). Each is exported once without
processing; TransformerLens' default processing is then applied at load (the same weight rewrite the
export runs), and one family is also exported processed. The reference is built by TransformerLens
itself from the HF folder (its own config and weight conversion), so no graphlens adapter code is in it.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import (ApertusConfig, BertConfig, BloomConfig, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPTJConfig, GPTNeoConfig,
                          GPTNeoXConfig, LlamaConfig, MistralConfig, OlmoConfig, OPTConfig, Phi3Config, PhiConfig, Qwen2Config, Qwen3Config)

from graphlens import HookedTransformer, patching
from graphlens.architectures import ARCHITECTURES, UnsupportedArchitectureError, supported_hf_architectures
from graphlens.bundle import MODEL_FILE
from graphlens.export.pipeline import export_bundle
from graphlens.rewrite.weights import NO_PROCESSING, Processing
from graphlens.runtime.sweep import SiteSweep
from graphlens.sites import get_act_name
from tests.models import Lazy, make_causal_lm, tl_reference_from_folder
from tests.test_equivalence import assert_close

_SHAPE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=300, max_position_embeddings=64)
_GQA = dict(_SHAPE, num_key_value_heads=2, intermediate_size=96)
# Llama 3's rotary scaling, with a short original context so that it changes the low frequencies
_LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=16)
# Folder names must not contain "llama" or "gemma": TransformerLens picks a config branch by name.
FAMILIES = {
    "neox": GPTNeoXConfig(**_SHAPE, intermediate_size=128, rotary_pct=0.5),
    "neox-seq": GPTNeoXConfig(**_SHAPE, intermediate_size=128, rotary_pct=0.5, use_parallel_residual=False),
    "gptj": GPTJConfig(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, vocab_size=300, n_positions=64),
    "rms-gqa": LlamaConfig(**_GQA, rope_parameters=_LLAMA3_ROPE),
    "mistral": MistralConfig(**_GQA, sliding_window=4),  # every layer local: 4 < the 11 test positions
    "qwen2": Qwen2Config(**_GQA),
    # layer 1 local (from max_window_layers on); TL 3.9 ignores the window: the reference gets it set
    # (tests.models.tl_reference_from_folder) and test_qwen2_window_is_real checks HF's logits
    "qwen2-window": Qwen2Config(**_GQA, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": Qwen3Config(**_GQA, head_dim=16),  # per-head q/k RMS norms
    "phi": PhiConfig(**_SHAPE, intermediate_size=128, partial_rotary_factor=0.5),
    "phi3": Phi3Config(**_GQA, sliding_window=5),  # fused qkv_proj and gate_up_proj, every layer local
    # layer 0 local (window 4), layer 1 global, each with its rotary base; per-head q/k norms (1 + w)
    "gm3": Gemma3TextConfig(**_GQA, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                            layer_types=["sliding_attention", "full_attention"],
                            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}),
    "olmo": OlmoConfig(**dict(_GQA, num_key_value_heads=4)),  # LayerNorms without parameters
    "apertus": ApertusConfig(**_GQA),  # per-head q/k norms, xIELU MLP
    "opt": OPTConfig(**_SHAPE, ffn_dim=128, word_embed_proj_dim=64),
    "gm": GemmaConfig(**dict(_GQA, num_key_value_heads=1), head_dim=32),  # multi-query, d_head != d_model/n_heads
    # layer 0 local (window 4 < the 11 test positions), layer 1 global; caps small enough to bend this
    # random model's small scores and logits (a cap left out changes logits by > 1e-3)
    "gm2": Gemma2Config(**_GQA, head_dim=16, query_pre_attn_scalar=24, sliding_window=4,
                        attn_logit_softcapping=0.05, final_logit_softcapping=1.0),
    # GPT-Neo: unscaled attention, layer 1 local with a window (4) shorter than the 11 test positions
    "neo": GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=4, vocab_size=300, max_position_embeddings=64,
                        window_size=4, attention_types=[[["global", "local"], 1]]),
    "bloom": BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=300),  # ALiBi, embedding LayerNorm
}
PROCESSED_EXPORT = "qwen2"  # also exported with processing: b_V folds into o_proj's added bias


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """family → HF folder, made the first time a test asks for it."""
    root = tmp_path_factory.mktemp("families")
    seeds = {name: i for i, name in enumerate(FAMILIES)}
    return Lazy(lambda name: make_causal_lm(root / name, FAMILIES[name], seed=seeds[name]))


@pytest.fixture(scope="module")
def family_bundles(family_dirs, tmp_path_factory):
    """(family, processed at export?) → bundle folder, exported the first time a test asks for it."""
    root = tmp_path_factory.mktemp("family-bundles")

    def export(key):
        name, processed = key
        if processed:
            return export_bundle(str(family_dirs[name]), root / f"{name}-processed", progress=None, decoder=False)
        return export_bundle(str(family_dirs[name]), root / f"{name}-raw", processing=NO_PROCESSING, progress=None)

    return Lazy(export)


def _flags(processed: bool) -> dict:
    return Processing().as_dict() if processed else NO_PROCESSING.as_dict()


def _tokens(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 300, size=(3, 11))


def as_graphlens_shape(ref: torch.Tensor, name: str, shape: tuple) -> torch.Tensor:
    """TL's per-head q/k norms (Qwen3) run on [batch*pos*heads, …]; graphlens keeps [batch, pos, heads, …]."""
    return ref.reshape(shape) if ".attn.q_norm." in name or ".attn.k_norm." in name else ref


def _compare_all(ours: HookedTransformer, ref, tokens: np.ndarray) -> None:
    with torch.no_grad():
        ref_logits, ref_cache = ref.run_with_cache(torch.tensor(tokens))
        ref_loss = ref(torch.tensor(tokens), return_type="loss")
    logits, cache = ours.run_with_cache(tokens)
    assert list(cache.keys()) == list(ref_cache.keys())  # same names, TransformerLens' forward order
    for name in ref_cache.keys():
        assert_close(cache[name], as_graphlens_shape(ref_cache[name], name, cache[name].shape), name)
    assert_close(logits, ref_logits, "logits")
    assert_close(ours(tokens, return_type="loss"), ref_loss, "loss")


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("processed", [True, False], ids=["default-processing", "no-processing"])
def test_every_hook_equals_transformer_lens(family_bundles, family_dirs, family, processed):
    ours = HookedTransformer.from_pretrained(family_bundles[family, False], **_flags(processed))
    _compare_all(ours, tl_reference_from_folder(family_dirs[family], processing=processed), _tokens())


def test_processed_export_equals_transformer_lens(family_bundles, family_dirs):
    ours = HookedTransformer.from_pretrained(family_bundles[PROCESSED_EXPORT, True])
    assert ours.cfg.normalization_type == "RMSPre"
    _compare_all(ours, tl_reference_from_folder(family_dirs[PROCESSED_EXPORT], processing=True), _tokens(2))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_matches_transformer_lens(family_bundles, family_dirs, family):
    ours = HookedTransformer.from_pretrained(family_bundles[family, False]).cfg
    ref = tl_reference_from_folder(family_dirs[family]).cfg
    for field in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out", "n_ctx", "act_fn",
                  "normalization_type", "positional_embedding_type", "rotary_dim", "rotary_adjacent_pairs",
                  "parallel_attn_mlp", "gated_mlp", "final_rms", "eps", "default_prepend_bos",
                  "original_architecture"):
        assert getattr(ours, field) == getattr(ref, field), field
    assert float(ours.rotary_base) == float(ref.rotary_base)
    if ref.use_NTK_by_parts_rope:  # Llama 3's rotary scaling
        for field in ("use_NTK_by_parts_rope", "NTK_original_ctx_len", "NTK_by_parts_low_freq_factor",
                      "NTK_by_parts_high_freq_factor", "NTK_by_parts_factor"):
            assert getattr(ours, field) == getattr(ref, field), field
    if ref.use_normalization_before_and_after:  # Gemma 2
        for field in ("use_normalization_before_and_after", "attn_scores_soft_cap", "output_logits_soft_cap",
                      "attn_scale"):
            assert getattr(ours, field) == getattr(ref, field), field
    fields = ("use_local_attn", "window_size", "attn_types") + (("use_attn_scale",) if ref.use_local_attn else ())
    for field in fields:  # sliding windows (GPT-Neo: no score scaling either)
        assert getattr(ours, field) == getattr(ref, field), field
    # TransformerLens leaves n_key_value_heads None without grouped-query attention; graphlens states it
    assert ours.n_key_value_heads == (ref.n_key_value_heads or ref.n_heads)


def test_qwen2_window_is_real(family_bundles, family_dirs):
    """Qwen2 ``use_sliding_window``: logits equal HF's, which window layer 1 (TransformerLens 3.9 does not:
    its reference is given the window in tests.models, and this test is where HF decides)."""
    from transformers import AutoModelForCausalLM

    folder, tokens = family_dirs["qwen2-window"], _tokens()
    ours = HookedTransformer.from_pretrained_no_processing(family_bundles["qwen2-window", False])  # HF's logits
    assert ours.cfg.attn_types == ["global", "local"] and ours.cfg.window_size == 4
    with torch.no_grad():
        hf = AutoModelForCausalLM.from_pretrained(folder).eval()(torch.tensor(tokens)).logits
        unwindowed = AutoModelForCausalLM.from_pretrained(folder, layer_types=["full_attention"] * 2).eval()(
            torch.tensor(tokens)).logits
    assert_close(ours(tokens), hf, "logits")
    assert not np.allclose(hf.numpy(), unwindowed.numpy(), atol=1e-3)  # the window changes the logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_generation_equals_hf_and_transformer_lens(family_bundles, family_dirs, family):
    """The KV-cache decoder graph, per family: greedy continuation as HF generate and TL generate."""
    from transformers import AutoModelForCausalLM

    ours = HookedTransformer.from_pretrained(family_bundles[family, False])
    tokens = np.random.default_rng(5).integers(1, 300, size=(2, 7))
    kwargs = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    generated = ours.generate(tokens, use_past_kv_cache=True, **kwargs)
    hf = AutoModelForCausalLM.from_pretrained(family_dirs[family]).eval()
    hf.generation_config.eos_token_id = None  # run all 8 steps, as stop_at_eos=False
    with torch.no_grad():
        hf_tokens = hf.generate(torch.tensor(tokens), attention_mask=torch.ones(tokens.shape, dtype=torch.long),
                                max_new_tokens=8, do_sample=False, pad_token_id=0)
        tl_tokens = tl_reference_from_folder(family_dirs[family]).generate(
            torch.tensor(tokens), use_past_kv_cache=True, **kwargs)
    np.testing.assert_array_equal(generated, hf_tokens.numpy())
    np.testing.assert_array_equal(generated, tl_tokens.numpy())
    np.testing.assert_array_equal(ours.generate(tokens, use_past_kv_cache=False, **kwargs), generated)


@pytest.mark.parametrize("family,hook", [("neox", "attn.hook_q"), ("neox-seq", "hook_resid_mid"),
                                         ("qwen2-window", "attn.hook_rot_k"), ("rms-gqa", "attn.hook_k"), ("qwen2", "attn.hook_v"),
                                         ("mistral", "mlp.hook_pre_linear"),
                                         ("qwen3", "attn.k_norm.hook_normalized"), ("gm", "ln2.hook_normalized"),
                                         ("gm2", "ln1_post.hook_scale"),  # Gemma 2's post-attention norm
                                         ("gm3", "attn.q_norm.hook_normalized"),
                                         ("gptj", "ln2.hook_normalized"),  # GPT-J: TL's copy of ln1, MLP only
                                         ("phi", "ln2.hook_scale"),  # Phi: as GPT-J
                                         ("phi3", "attn.hook_k"), ("phi3", "mlp.hook_pre"),  # slices of fused outputs
                                         ("opt", "mlp.hook_post"),  # OPT: inside its flattened MLP
                                         ("opt", "hook_resid_mid"),  # OPT: the residual skip reads the flattened view too
                                         ("neo", "attn.hook_k"),  # GPT-Neo: through its replaced _attn
                                         ("bloom", "attn.hook_v")])
def test_patching_family_sites_equals_transformer_lens(family_bundles, family_dirs, family, hook):
    """A patch at a family-specific site (fused qkv part, GQA key/value heads, gated MLP) propagates as in TL."""
    ours = HookedTransformer.from_pretrained(family_bundles[family, False])
    ref = tl_reference_from_folder(family_dirs[family])
    tokens, name = _tokens(3), f"blocks.0.{hook}"
    _, cache = ours.run_with_cache(tokens, names_filter=[name])
    patch = np.random.default_rng(4).normal(size=cache[name].shape).astype(np.float32)
    mask = np.zeros((1, tokens.shape[1]) + (1,) * (patch.ndim - 2), dtype=bool)
    mask[:, 3:7] = True
    logits = ours.run_graph(tokens, ["logits"], {f"{name}.patch": patch, f"{name}.patch_mask": mask})["logits"]

    def replace(activation, hook):  # in graphlens' shape (TL flattens Qwen3's q/k norms)
        return torch.where(torch.tensor(mask), torch.tensor(patch), activation.reshape(patch.shape)).reshape(
            activation.shape)

    with torch.no_grad():
        ref_logits = ref.run_with_hooks(torch.tensor(tokens), fwd_hooks=[(name, replace)])
    assert_close(logits, ref_logits, f"logits after patching {name}")
    assert not np.allclose(logits, ours(tokens), atol=1e-3)  # the patch changed something


@pytest.mark.parametrize("family", list(FAMILIES))
def test_patching_sweep_equals_transformer_lens(family_bundles, family_dirs, family):
    """Each family's graph cuts into a sweep (only batch-major tensors cross the cuts) and patches as TL."""
    import transformer_lens.patching as tl_patching

    ours = HookedTransformer.from_pretrained(family_bundles[family, False])
    tokens = _tokens(5)[:, :6]
    for kind in ["resid_pre", "z", "q", "k", "v", "pattern", "mlp_out"]:
        sites = [get_act_name(kind, layer) for layer in range(ours.cfg.n_layers)]
        sweep = SiteSweep(ours, tokens, sites)
        # OPT's MLP runs on [batch*pos, d_model]: no batch axis to repeat, so its sites use per-site cuts
        expected = not (family == "opt" and kind == "mlp_out")
        assert all(sweep.supports(site) for site in sites) == expected, (family, kind)
    ref = tl_reference_from_folder(family_dirs[family])
    clean = _tokens(6)[:, :6]
    _, clean_cache = ours.run_with_cache(clean)
    with torch.no_grad():
        _, ref_cache = ref.run_with_cache(torch.tensor(clean))

    def metric(logits):
        return (logits[:, -1, 11] - logits[:, -1, 42]).mean()

    got = patching.get_act_patch_attn_head_out_all_pos(ours, tokens, clean_cache, metric, progress=False)
    with torch.no_grad():
        want = tl_patching.get_act_patch_attn_head_out_all_pos(ref, torch.tensor(tokens), ref_cache, metric).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3 * (1 + np.abs(want).max()), rtol=0)
    assert np.ptp(want) > 1e-5  # the patches move the metric


def test_unsupported_architecture_fails_at_export_with_the_supported_list(tmp_path):
    BertConfig(architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedArchitectureError) as err:
        export_bundle(str(tmp_path / "bert"), tmp_path / "out", progress=None)
    message = str(err.value)
    assert "BertForMaskedLM" in message
    for hf_class in supported_hf_architectures():
        assert hf_class in message
    assert {"GPTNeoXForCausalLM", "GPTJForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
            "GemmaForCausalLM", "Gemma2ForCausalLM", "OPTForCausalLM"} <= set(supported_hf_architectures())
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_adapter_weights_round_trip(name, family_bundles):
    """write_weights ∘ read_weights is the identity on the HF parameters an adapter maps."""
    arch = ARCHITECTURES[name]
    family = {"gpt_neox": "neox", "gpt_neox_sequential": "neox-seq", "gptj": "gptj", "llama": "rms-gqa", "mistral": "mistral",
              "qwen2": "qwen2", "qwen3": "qwen3", "phi": "phi", "phi3": "phi3", "apertus": "apertus", "olmo": "olmo",
              "gemma": "gm", "gemma2": "gm2", "gemma3": "gm3", "opt": "opt", "gpt_neo": "neo", "bloom": "bloom"}.get(name)
    if family is None:
        pytest.skip("covered by the GPT-2 tests")
    bundle = family_bundles[family, False]
    proto = onnx.load(bundle / MODEL_FILE)
    params = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    cfg = HookedTransformer.from_pretrained_no_processing(bundle).cfg.to_dict()
    written = arch.write_weights(arch.read_weights(params, cfg), cfg)
    for key, value in written.items():
        if key in params:
            np.testing.assert_allclose(value, params[key], rtol=1e-6, atol=0, err_msg=key)  # Gemma: W_E·√d/√d
        else:
            assert not np.any(value), f"{key}: not in the graph but non-zero"


@pytest.mark.parametrize("config,problem", [
    (OPTConfig(**_SHAPE, do_layer_norm_before=False, architectures=["OPTForCausalLM"]), "do_layer_norm_before"),
    (OPTConfig(**_SHAPE, word_embed_proj_dim=32, architectures=["OPTForCausalLM"]), "word_embed_proj_dim"),
], ids=["opt-post-norm", "opt-projection"])
def test_unsupported_variants_fail_at_export_naming_the_setting(tmp_path, config, problem):
    config.save_pretrained(tmp_path / "hf")  # the config alone: the check comes before any weight is read
    with pytest.raises(ValueError, match=problem):
        export_bundle(str(tmp_path / "hf"), tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()
