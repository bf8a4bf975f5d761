"""A bundle's external weights as read-only memory maps: read once from disk, shared by every graph.

Loading a bundle does not copy ``model.onnx.data`` into protobuf strings and then into numpy arrays:
each external initializer becomes a numpy view of one ``np.memmap`` of the data file, handed to ONNX
Runtime as an ``OrtValue`` (which wraps the buffer, no copy). ``model.onnx`` and ``decoder.onnx`` refer
to the same bytes of the same file, so both graphs get the same view. Pages are read from disk when a
session first touches them and stay in the page cache (shared with other processes mapping the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from graphlens.bundle_files import inside
from graphlens.errors import BundleError

# where an external initializer's bytes are: (file name, offset, length)
Source = tuple[str, int, int]
_ALIGN = 64


def external_source(init: onnx.TensorProto) -> Source | None:
    """``(location, offset, length)`` of an initializer stored in an external file; None for inline data."""
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in init.external_data}
    return info.get("location", ""), int(info.get("offset", 0)), int(info.get("length", -1))


class MappedWeights:
    """The external data files of one bundle folder, each mapped once; ``array`` views into them."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._maps: dict[str, np.memmap] = {}
        self._arrays: dict[tuple[Source, int, tuple[int, ...]], np.ndarray] = {}

    def _map(self, location: str) -> np.memmap:
        if location not in self._maps:
            path = inside(self.folder, location, "external data location")
            try:
                self._maps[location] = np.memmap(path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as err:
                raise BundleError(f"cannot map the weights file {path} ({err}); export the bundle again") from err
        return self._maps[location]

    def array(self, init: onnx.TensorProto) -> np.ndarray:
        """The read-only array of an external initializer (the same object for the same bytes and type)."""
        source = external_source(init)
        if source is None:
            raise BundleError(f"initializer {init.name!r} is not stored in an external data file")
        dims = tuple(int(d) for d in init.dims)
        key = (source, init.data_type, dims)
        if key not in self._arrays:
            location, offset, length = source
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
            nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
            data = self._map(location)
            if (length >= 0 and length != nbytes) or offset + nbytes > data.shape[0]:
                raise BundleError(f"{self.folder}: weight {init.name!r} needs {nbytes} bytes at offset {offset} of "
                                  f"{location}, which does not hold them; export the bundle again")
            view = np.ndarray(dims, dtype=dtype, buffer=data, offset=offset)  # a plain ndarray over the map
            if offset % _ALIGN:  # kernels may want aligned data: small tensors packed together are copied
                view = view.copy()
            view.flags.writeable = False
            self._arrays[key] = view
        return self._arrays[key]
