"""Export memory: the weights are held once (the HF model's), never copied into protobufs or per graph.

The peak resident memory of an export with its decoder graph, measured in a subprocess
(``benchmarks.export_memory``), stays within 1.5x the exported weights' bytes above the RSS of the
imports. The model is wide and shallow so that weights, not the exporter's per-layer tracing
structures, dominate; ``python -m benchmarks.export_memory --shape tinyllama`` measures a 1.1B model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from benchmarks.export_memory import measure_export
from graphlens import HookedTransformer
from tests.models import make_causal_lm

WIDE = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=4, vocab_size=32000, max_position_embeddings=64, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    return make_causal_lm(tmp_path_factory.mktemp("wide") / "llama", LlamaConfig(**WIDE), tokenizer=False)


def test_export_peak_rss_within_1_5x_weights(wide_llama, tmp_path):
    result = measure_export(wide_llama, tmp_path / "bundle", cap_gb=4.0)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(wide_llama).parameters())
    assert result["weights"] >= 4 * n_params * 0.99  # every weight is in model.onnx.data (float32)
    assert result["ratio"] <= 1.5, result

    # the bundle those numbers belong to computes the model: logits equal HF's
    tokens = np.array([[1, 17, 250, 9000, 31999, 4]])
    hf = AutoModelForCausalLM.from_pretrained(wide_llama, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(torch.tensor(tokens)).logits.numpy()
    logits = HookedTransformer.from_pretrained(tmp_path / "bundle")(tokens)
    centred = expected - expected.mean(-1, keepdims=True)  # the bundle's unembedding is centred
    np.testing.assert_allclose(logits, centred, atol=2e-4, rtol=1e-4)
