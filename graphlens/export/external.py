"""Weights kept out of the exported graphs from the start, and written once for every graph of a bundle.

The torch exporter's graphs hold their initializers as references to the HF model's tensors. Here each
graph becomes a protobuf whose initializers are external-data placeholders (no weight bytes, so the
2 GB protobuf limit never applies), the tensors are collected by name in ``ExportWeights`` (views, no
copies), processing streams through them part by part, and ``WeightsFile`` writes each one once;
``point_at_weights`` then fills every graph's placeholders with its offset in that one file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path
from typing import Iterator, Mapping

import ml_dtypes
import numpy as np
import onnx
import onnx.external_data_helper
import onnx_ir as ir
import torch

from graphlens.errors import ExportError

PENDING = "graphlens-pending-weights"  # placeholder location until the weights file is written
INLINE_MAX_BYTES = 1024  # smaller initializers stay inside the graph file (as onnx.save_model's threshold)
ALIGNMENT = 1 << 16  # offsets of large tensors: a multiple of the allocation granularity (mmap-able)
ALIGN_MIN_BYTES = 1 << 20
SMALL_ALIGNMENT = 64  # every other tensor: a cache line, so the runtime's memory map can be read in place


def numpy_view(tensor: torch.Tensor | np.ndarray) -> np.ndarray:
    """A numpy view of a CPU tensor (bfloat16 as ml_dtypes.bfloat16), without copying."""
    if isinstance(tensor, np.ndarray):
        return tensor
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def detach_weights(model: ir.Model, prefix: str) -> tuple[onnx.ModelProto, dict[str, torch.Tensor | np.ndarray]]:
    """``model`` as a proto whose initializers are placeholders, and their tensors by name (``prefix``
    stripped from names that start with it, in the proto too)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in list(model.graph.initializers.items()):
        tensor = value.const_value
        stripped = name[len(prefix):] if name.startswith(prefix) else name
        raw = getattr(tensor, "raw", None)  # the exporter's TorchTensor wraps the model's own tensor: no copy
        tensors[stripped] = raw if isinstance(raw, torch.Tensor) else tensor.numpy()
        value.const_value = ir.ExternalTensor(PENDING, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=name)
    proto = ir.serde.serialize_model(model)
    renamed = {}
    for init in proto.graph.initializer:
        if init.name.startswith(prefix):
            renamed[init.name] = init.name = init.name[len(prefix):]
    for node in proto.graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
    for inp in proto.graph.input:
        inp.name = renamed.get(inp.name, inp.name)
    return proto, tensors


_MADV_PAGEOUT = 21  # Linux ≥ 5.4: reclaim these pages now; their content is kept (re-read on access)
_PAGE = 4096


def _page_out(tensor: torch.Tensor) -> None:
    """Let the kernel reclaim the whole pages of a tensor the export is done with.

    transformers maps safetensors files into memory, so the HF weights are file-backed pages that
    count as resident once read; a released tensor's pages would stay resident until the model is
    gone. MADV_PAGEOUT drops clean file-backed pages (anonymous memory without swap stays as it is);
    contents are preserved either way. A no-op off Linux.
    """
    try:
        libc = _libc()
    except OSError:
        return
    start = tensor.data_ptr()
    first = -(-start // _PAGE) * _PAGE
    last = (start + tensor.untyped_storage().nbytes() - tensor.storage_offset() * tensor.element_size()) // _PAGE * _PAGE
    if last > first:
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_PAGEOUT)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class ExportWeights(Mapping[str, np.ndarray]):
    """The exported graphs' initializers by name, as numpy views of the HF model's tensors.

    Two graphs exported from one model share its parameters by name; ``release`` drops a tensor once
    it is written, so memory falls as the weights file grows.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor | np.ndarray] = {}

    def add(self, tensors: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        for name, tensor in tensors.items():
            known = self._tensors.setdefault(name, tensor)
            if known is not tensor and not np.array_equal(numpy_view(known), numpy_view(tensor)):
                raise ExportError(f"the exported graphs hold different values for the initializer {name!r}")

    def release(self, name: str) -> None:
        tensor = self._tensors.pop(name, None)
        if isinstance(tensor, torch.Tensor):
            _page_out(tensor)

    def __getitem__(self, name: str) -> np.ndarray:
        return numpy_view(self._tensors[name])

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tensors))

    def __len__(self) -> int:
        return len(self._tensors)


def _raw(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array of any dtype (bfloat16 too)."""
    return memoryview(array.reshape(-1).view(np.uint8))


class WeightsFile:
    """Writes tensors one by one to an ONNX external-data file; small ones are kept to be stored inline."""

    def __init__(self, path: Path):
        self.path = path
        self.location = path.name
        self.offsets: dict[str, tuple[int, int]] = {}
        self.inline: dict[str, bytes] = {}
        self._file = open(path, "wb")

    def write(self, name: str, array: np.ndarray) -> None:
        """Append ``array`` in C order (a non-contiguous view is written in blocks of rows, not copied whole)."""
        nbytes = array.nbytes
        if nbytes < INLINE_MAX_BYTES:
            self.inline[name] = _raw(np.ascontiguousarray(array)).tobytes()
            return
        offset = self._file.tell()
        align = ALIGNMENT if nbytes >= ALIGN_MIN_BYTES else SMALL_ALIGNMENT
        if offset % align:
            offset += align - offset % align
            self._file.seek(offset)
        if array.flags.c_contiguous or array.ndim < 2:
            self._file.write(_raw(np.ascontiguousarray(array)))
        else:
            rows = max(1, (16 << 20) // max(1, array[0].nbytes))
            for start in range(0, array.shape[0], rows):
                self._file.write(_raw(np.ascontiguousarray(array[start:start + rows])))
        self.offsets[name] = (offset, nbytes)

    def __contains__(self, name: str) -> bool:
        return name in self.offsets or name in self.inline

    def close(self) -> None:
        self._file.truncate()
        self._file.close()

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def point_at_weights(proto: onnx.ModelProto, weights: WeightsFile) -> None:
    """Replace ``proto``'s placeholders by references into ``weights`` (or inline bytes for small ones)."""
    for init in proto.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        if not any(e.key == "location" and e.value == PENDING for e in init.external_data):
            continue
        del init.external_data[:]
        if init.name in weights.inline:
            init.data_location = onnx.TensorProto.DEFAULT
            init.raw_data = weights.inline[init.name]
        elif init.name in weights.offsets:
            offset, length = weights.offsets[init.name]
            for key, value in (("location", weights.location), ("offset", offset), ("length", length)):
                entry = init.external_data.add()
                entry.key, entry.value = key, str(value)
        else:
            raise ExportError(f"the graph reads the initializer {init.name!r}, which no weight was written for")


PROTOBUF_LIMIT = (1 << 31) - 1


def inline_weights(protos: list[onnx.ModelProto], weights: WeightsFile) -> None:
    """Copy the weights into each graph (single-file models) and remove ``weights``'s file."""
    if weights.size >= PROTOBUF_LIMIT - (16 << 20):
        raise ExportError(f"the weights ({weights.size / 2**30:.1f} GiB) do not fit in a single-file ONNX model "
                          f"(protobuf's 2 GB limit); export without --no-external-data")
    for proto in protos:
        onnx.external_data_helper.load_external_data_for_model(proto, str(weights.path.parent))
    weights.path.unlink()
