"""Execution providers: CUDA when ONNX Runtime has it (runs on a GPU machine), a clear error otherwise."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from graphlens import HookedTransformer
from graphlens.runtime.session import DeviceError, resolve_device

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_default_device_is_the_best_available():
    assert resolve_device(None) == ("cuda" if HAS_CUDA else "cpu")


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_without_the_gpu_build_says_how_to_get_it(small_bundle):
    with pytest.raises(DeviceError, match="pip install onnxruntime-gpu"):
        HookedTransformer.from_pretrained(small_bundle, device="cuda")


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU")
def test_cuda_run_with_cache_equals_cpu(small_bundle):
    cpu = HookedTransformer.from_pretrained(small_bundle, device="cpu")
    gpu = HookedTransformer.from_pretrained(small_bundle, device="cuda")
    assert gpu.graph.session(["logits"]).get_providers()[0] == "CUDAExecutionProvider"
    tokens = np.random.default_rng(0).integers(0, cpu.cfg.d_vocab, size=(3, 9))
    cpu_logits, cpu_cache = cpu.run_with_cache(tokens)
    gpu_logits, gpu_cache = gpu.run_with_cache(tokens)
    np.testing.assert_allclose(gpu_logits, cpu_logits, atol=1e-4, rtol=1e-4)
    for name in cpu_cache:
        finite = np.isfinite(cpu_cache[name])
        np.testing.assert_allclose(gpu_cache[name][finite], cpu_cache[name][finite], atol=1e-4, rtol=1e-4, err_msg=name)
