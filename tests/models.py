"""Tiny random HF models for tests, and the TransformerLens 3.9 reference built from the same weights.

Nothing here downloads: configs are built in code, weights are random, the tokenizer is trained on a
few sentences. Norm weights and all biases are perturbed so weight processing is really exercised.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Hello world! Interpretability researchers read activations, patch them and look at attention.",
    "def add(a, b):\n    return a + b\n",
] * 20


def train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Random-init HF models have unit norm weights and zero biases: make them generic."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))


class Lazy(dict):
    """key → value made by ``make(key)`` the first time a test asks for it (one export per family used)."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


def make_gpt2(folder: Path, seed: int = 0, tokenizer: bool = True, **config) -> Path:
    """Save a random GPT-2 (``GPT2Config(**config)``) and a matching tokenizer to ``folder``."""
    torch.manual_seed(seed)
    defaults = dict(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=300)
    cfg = GPT2Config(**{**defaults, **config})
    if tokenizer:
        tok = train_tokenizer(cfg.vocab_size)
        cfg.bos_token_id = cfg.eos_token_id = tok.bos_token_id
    model = GPT2LMHeadModel(cfg).eval()
    perturb_(model, seed)
    model.save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def tl_reference(hf_folder: Path, processing: bool = True):
    """TransformerLens 3.9 HookedTransformer holding the same weights (hand-built config, no hub)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
        n_layers=c.n_layer, n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn=c.activation_function,
        normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", device="cpu",
    )
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg), fold_ln=processing, center_writing_weights=processing,
        center_unembed=processing, fold_value_biases=processing,
    )
    if (Path(hf_folder) / "tokenizer.json").is_file():
        model.set_tokenizer(PreTrainedTokenizerFast.from_pretrained(hf_folder))
    return model.eval()


def make_causal_lm(folder: Path, config, seed: int = 0, tokenizer: bool = True) -> Path:
    """Save a random model of any causal-LM family (``config``: an HF config object) and a tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if tokenizer:
        tok = train_tokenizer(config.vocab_size)
        config.bos_token_id = config.eos_token_id = config.pad_token_id = tok.bos_token_id
    model = AutoModelForCausalLM.from_config(config).eval()
    perturb_(model, seed)
    model.save_pretrained(folder)
    if tokenizer:
        tok.save_pretrained(folder)
    return folder


def tl_reference_from_folder(hf_folder: Path, processing: bool = True):
    """TransformerLens 3.9 built entirely by TL from a local HF folder: its own config conversion and
    weight conversion (``get_pretrained_model_config`` / ``get_pretrained_state_dict`` with the HF model
    passed in), so nothing of graphlens' adapters is involved. No hub."""
    from transformers import AutoModelForCausalLM
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict

    folder = str(hf_folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    if hf.config.architectures == ["GemmaForCausalLM"]:
        cfg = _tl_gemma_config(hf.config)
    elif hf.config.architectures == ["Gemma2ForCausalLM"]:
        cfg = _tl_gemma2_config(hf.config)
    elif hf.config.architectures == ["Gemma3ForCausalLM"]:
        cfg = _tl_gemma3_config(hf.config)
    elif hf.config.architectures == ["OlmoForCausalLM"]:
        cfg = _tl_olmo_config(hf.config)
    elif hf.config.architectures == ["PhiForCausalLM"]:
        cfg = _tl_phi_config(folder, processing)
    else:
        cfg = get_pretrained_model_config(folder, device="cpu", fold_ln=processing)
    if hf.config.architectures == ["Qwen2ForCausalLM"] and hf.config.use_sliding_window:
        _window_qwen2(cfg, hf.config)
    cfg.tokenizer_name = None  # set below from the folder (TL would try the hub otherwise)
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        get_pretrained_state_dict(folder, cfg, hf_model=hf), fold_ln=processing,
        center_writing_weights=processing, fold_value_biases=processing,
        # as TL's from_pretrained: no center_unembed under a logit soft-cap
        center_unembed=processing and not cfg.output_logits_soft_cap > 0,
    )
    if (Path(folder) / "tokenizer.json").is_file():
        model.set_tokenizer(PreTrainedTokenizerFast.from_pretrained(folder))
    return model.eval()


def _tl_phi_config(folder: str, processing: bool):
    """TL 3.9's own Phi config, which reads ``hf_config.partial_rotary_factor``: transformers 5 keeps it in
    ``rope_parameters``, so the attribute is lent back while TL reads the config."""
    from unittest import mock

    from transformers import PhiConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    factor = property(lambda c: c.rope_parameters["partial_rotary_factor"])
    with mock.patch.object(PhiConfig, "partial_rotary_factor", factor, create=True):
        return get_pretrained_model_config(folder, device="cpu", fold_ln=processing)


def _window_qwen2(cfg, c) -> None:
    """TL 3.9 ignores Qwen2's ``use_sliding_window`` (every layer global); HF windows the layers from
    ``max_window_layers`` on. The reference gets HF's windows through TL's own local attention, so that
    every hook is still compared (tests.test_architectures checks the logits against HF's as well)."""
    cfg.use_local_attn, cfg.window_size = True, c.sliding_window
    cfg.attn_types = ["local" if t == "sliding_attention" else "global" for t in c.layer_types]


def _tl_gemma_config(c):
    """TL 3.9 configures Gemma by hub name only (fixed sizes): its gemma-2b entry, with this model's sizes.

    One change: act_fn is HF's ``gelu_pytorch_tanh`` (TL's entry says exact "gelu", which is not what
    HF's Gemma computes)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", rotary_base=10000, rotary_dim=c.head_dim,
        positional_embedding_type="rotary", use_attn_scale=True, n_key_value_heads=c.num_key_value_heads,
        gated_mlp=True, final_rms=True, original_architecture="GemmaForCausalLM", device="cpu",
    )


def _tl_gemma2_config(c):
    """TL 3.9's gemma-2-2b entry (by hub name only, fixed sizes), with this model's sizes, window and caps."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", rotary_base=10000.0, rotary_dim=c.head_dim,
        positional_embedding_type="rotary", use_attn_scale=True, attn_scale=c.query_pre_attn_scalar ** 0.5,
        n_key_value_heads=c.num_key_value_heads, window_size=c.sliding_window, use_local_attn=True,
        attn_types=["local", "global"] * (c.num_hidden_layers // 2),  # as TL's entries: even layers local
        attn_scores_soft_cap=c.attn_logit_softcapping, output_logits_soft_cap=c.final_logit_softcapping,
        gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
        original_architecture="Gemma2ForCausalLM", device="cpu",
    )


def _tl_gemma3_config(c):
    """TL 3.9's gemma-3-270m entry (by hub name only), with this model's sizes, window, layer types and rotary
    bases (TL's entry has no attn_scale: the test model's query_pre_attn_scalar is its d_head)."""
    from transformer_lens import HookedTransformerConfig

    rope = c.rope_parameters
    return HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.rms_norm_eps, d_vocab=c.vocab_size,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", rotary_base=rope["full_attention"]["rope_theta"],
        rotary_base_local=rope["sliding_attention"]["rope_theta"], rotary_dim=c.head_dim,
        positional_embedding_type="rotary", use_attn_scale=True, n_key_value_heads=c.num_key_value_heads,
        gated_mlp=True, final_rms=True, use_normalization_before_and_after=True, use_qk_norm=True,
        window_size=c.sliding_window, use_local_attn=True,
        attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types],
        original_architecture="Gemma3ForCausalLM", device="cpu",
    )


def _tl_olmo_config(c):
    """TL 3.9's allenai/OLMo-1B-hf entry (by hub name only), with this model's sizes."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=1e-5,
        d_vocab=c.vocab_size, act_fn="silu", normalization_type="LN", rotary_base=c.rope_parameters["rope_theta"],
        attn_types=["global"] * c.num_hidden_layers, positional_embedding_type="rotary", gated_mlp=True,
        clip_qkv=c.clip_qkv, original_architecture="OlmoForCausalLM", device="cpu",
    )
