"""ONNX Runtime plumbing: which execution provider, and session options."""

from __future__ import annotations

import os

import onnxruntime as ort
from graphlens.errors import DeviceError

THREADS_ENV = "GRAPHLENS_ORT_THREADS"  # intra-op threads per session (e.g. one Ray actor per core)
_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def resolve_device(device: str | None) -> str:
    """``None`` → the best available ("cuda" when ONNX Runtime has CUDA, else "cpu")."""
    available = ort.get_available_providers()
    if device is None:
        return "cuda" if _PROVIDERS["cuda"] in available else "cpu"
    kind = device.split(":")[0]
    if kind not in _PROVIDERS:
        raise DeviceError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    if _PROVIDERS[kind] not in available:
        raise DeviceError(
            f"device {device!r} needs {_PROVIDERS[kind]}, but this onnxruntime only has {available}. "
            "Install the GPU build: `pip uninstall -y onnxruntime && pip install onnxruntime-gpu`."
        )
    return device


def providers_for(device: str) -> list:
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return [(_PROVIDERS["cuda"], {"device_id": index}), _PROVIDERS["cpu"]]
    return [_PROVIDERS["cpu"]]


# Fused norm kernels round differently from the written-out norm, and ONNX Runtime fuses a norm only
# where its hook_scale/hook_normalized are not graph outputs: requests for different outputs (model(x)
# vs run_with_cache(x)) would then differ by ~1e-7. With these off, every path runs the same kernels.
# (Names as ONNX Runtime registers them; older releases call the first two "LayerNormFusion".)
DISABLED_OPTIMIZERS = ("LayerNormFusionL1", "LayerNormFusionL2", "LayerNormFusion", "SimplifiedLayerNormFusion")


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # overridable-initializer warnings are expected for substitution inputs
    threads = int(os.environ.get(THREADS_ENV, "0"))  # 0: ONNX Runtime's default (one per core)
    if threads > 0:
        options.intra_op_num_threads = threads
    return options
