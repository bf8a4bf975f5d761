"""Float weights back from a quantized bundle's initializers (numpy, no ONNX Runtime), under the HF
names and layouts the architecture adapters read, so ``model.W_Q``, ``model.blocks[0].attn.W_Q`` and the
rest are the weights the quantized graph computes with.

Formats (as ``onnxruntime.quantization`` stores them, described by the manifest's
``quantization.weights`` records):

- ``MatMulNBits`` (bits b, block size B, K inputs, N outputs): ``quantized`` uint8
  ``[N, ceil(K / B), B * b / 8]``, element ``k`` of column ``n`` in the low bits first;
  ``scales`` ``[N, ceil(K / B)]``; ``zero_points`` packed the same way, or absent (symmetric:
  ``2^(b-1)``). ``W[k, n] = (q[n, k] - zero_point[n, k // B]) * scale[n, k // B]``.
- ``MatMulInteger`` (dynamic int8): ``quantized`` int8 ``[K, N]``, ``scales`` a scalar (or ``[N]``),
  ``zero_points`` the same shape. ``W = (q - zero_point) * scale``.

A record with ``columns`` [start, stop) is that slice of the output columns of a fused matrix.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from jaxtyping import Float

from graphlens.errors import BundleError


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first ``count`` b-bit unsigned values along the last axis of ``packed`` (low bits first)."""
    per_byte = 8 // bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    values = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return values.reshape(*packed.shape[:-1], -1)[..., :count]


def matmul_nbits_weight(quantized: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                        k: int, n: int, bits: int, block_size: int) -> Float[np.ndarray, "k n"]:
    """The ``[K, N]`` float weight a MatMulNBits node multiplies by."""
    blocks = -(-k // block_size)
    q = _unpack(quantized.reshape(n, blocks, -1), bits, block_size).astype(np.float32)  # [N, blocks, B]
    scale = scales.reshape(n, blocks, 1).astype(np.float32)
    if zero_points is None:
        zero = np.float32(1 << (bits - 1))
    elif zero_points.dtype == np.uint8 and bits < 8:
        zero = _unpack(zero_points.reshape(n, -1), bits, blocks).reshape(n, blocks, 1).astype(np.float32)
    else:
        zero = zero_points.reshape(n, blocks, 1).astype(np.float32)
    w = ((q - zero) * scale).reshape(n, blocks * block_size)[:, :k]
    return np.ascontiguousarray(w.T).astype(scales.dtype, copy=False)


def matmul_integer_weight(quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> Float[np.ndarray, "k n"]:
    """The ``[K, N]`` float weight a dynamically quantized MatMulInteger stands for."""
    zero = 0.0 if zero_point is None else zero_point.astype(np.float32)
    return ((quantized.astype(np.float32) - zero) * scale.astype(np.float32)).astype(scale.dtype, copy=False)


def dequantised(params: Mapping[str, np.ndarray], quantization: dict) -> dict[str, np.ndarray]:
    """``params`` (a graph's initializers by name) plus each quantized weight, dequantised, under its HF
    name and layout (``quantization``: the manifest's field)."""
    out = dict(params)
    matrices: dict[str, np.ndarray] = {}  # a fused matrix is dequantised once for all its parts
    for record in quantization["weights"]:
        try:
            blobs = [params[record[k]] if record.get(k) else None for k in ("quantized", "scales", "zero_points")]
        except KeyError as err:
            raise BundleError(f"the graph lacks {err.args[0]!r}, which quantization.weights lists for "
                              f"{record['name']}; quantize the bundle again") from None
        w = matrices.get(record["quantized"])
        if w is None and record["op"] == "MatMulNBits":
            k, n = record["shape"]
            w = matmul_nbits_weight(*blobs, k, n, quantization["bits"], record["block_size"])
        elif w is None:
            w = matmul_integer_weight(*blobs)
        matrices[record["quantized"]] = w
        if record.get("columns"):
            w = w[:, record["columns"][0]:record["columns"][1]]
        out[record["name"]] = np.ascontiguousarray(w.T) if record["transposed"] else w
    return out
