"""A bundle's instrumented graph, held once in memory, and the specialised sessions made from it."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable, Iterable, Mapping, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from graphlens.devices import DeviceSplit
from graphlens.devices.bfloat16 import has_bfloat16, widen_bfloat16
from graphlens.errors import BundleError
from graphlens.export_names import is_substitution_input
from graphlens.rewrite.specialise import specialise
from graphlens.runtime.mapped_weights import MappedWeights, Source, external_source
from graphlens.runtime.session import DISABLED_OPTIMIZERS, providers_for, session_options

T = TypeVar("T")

LOGITS = "logits"  # the graph output every bundle has (beside its hooks)

# Initializers at least this large are shared between sessions instead of copied into each.
_SHARED_MIN_BYTES = 1024
_SHARED = "graphlens-shared"  # the external-data location that marks a weight held by BundleGraph


class BundleGraph:
    """The instrumented ONNX graph of a bundle; hands out sessions specialised per request.

    Weights live once, as OrtValues given to every session (``add_external_initializers``); the
    per-request graphs carry no weight data, so specialising is cheap.
    """

    def __init__(self, proto: onnx.ModelProto, device: str, max_sessions: int = 16, mapped: MappedWeights | None = None):
        """``mapped``: where initializers still stored in external files are read from (memory maps of
        the bundle's data file, see ``mapped_weights``); without it, ``proto`` holds all weight bytes."""
        self.device = device
        self.weights: dict[str, np.ndarray] = {}
        self.weight_sources: dict[str, Source] = {}  # external initializers: where their bytes are on disk
        self._ort_weights: dict[str, ort.OrtValue] = {}
        self.share_weights(proto, mapped)
        self.proto = proto
        # inputs of the model's own with a default (attention_mask, position_ids): fed or not, per run
        inits = {i.name: i for i in proto.graph.initializer}
        self.input_defaults: dict[str, np.ndarray] = {
            i.name: self.weights[i.name] if i.name in self.weights else numpy_helper.to_array(inits[i.name])
            for i in proto.graph.input
            if i.name in inits and not is_substitution_input(i.name)
        }
        self.output_names = [o.name for o in proto.graph.output]
        self.input_names = {i.name for i in proto.graph.input}
        self._sessions: OrderedDict[tuple, object] = OrderedDict()
        self._types: dict[str, onnx.ValueInfoProto] | None = None
        self._max_sessions = max_sessions
        self.session_runs = 0  # how many times any session ran (tests use it to prove single passes)
        self.split: DeviceSplit | None = None  # blocks across devices (n_devices > 1): every run is cut there
        self.replaced = False  # the graph is no longer the bundle's file (replace_proto)

    def share_weights(self, proto: onnx.ModelProto, mapped: MappedWeights | None = None) -> None:
        """Move ``proto``'s weights (in place) into the arrays every session shares: initializers stored in
        the bundle's data file as views of ``mapped``, large inline ones (e.g. an attached SAE's) as
        copies; each is then held once, not once per session. bfloat16 weights are widened (see
        ``devices.bfloat16``)."""
        added: dict[str, np.ndarray] = {}
        for init in proto.graph.initializer:
            source = external_source(init)
            if source is not None and source[0] == _SHARED:
                continue  # shared already
            if source is not None:
                if mapped is None:
                    raise BundleError(f"initializer {init.name!r} is in {source[0]}, and no bundle folder was given to read it")
                added[init.name], self.weight_sources[init.name] = mapped.array(init), source
            elif init.data_type != onnx.TensorProto.STRING and _nbytes(init) >= _SHARED_MIN_BYTES:
                added[init.name] = numpy_helper.to_array(init)
            else:
                continue
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                init.ClearField(field)
            del init.external_data[:]
            for key, value in (("location", _SHARED), ("offset", "0"), ("length", "0")):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
            init.data_location = onnx.TensorProto.EXTERNAL
        if has_bfloat16(proto):  # no bfloat16 kernels on the CPU, no bfloat16 in numpy: computed in float32
            widen_bfloat16(proto, added)
        self.weights.update(added)
        self._ort_weights.update((name, ort.OrtValue.ortvalue_from_numpy(array)) for name, array in added.items())

    def session(self, outputs: Iterable[str], fed: Mapping[str, Iterable[str]] | None = None) -> ort.InferenceSession:
        outputs = tuple(sorted(set(outputs)))
        fed_key = tuple(sorted((h, tuple(sorted(k))) for h, k in (fed or {}).items()))
        key = (outputs, fed_key)
        return self.cached(key, lambda: self.compile(specialise(self.proto, outputs, dict(fed_key))))

    def compile(self, model: onnx.ModelProto, spinning: bool = True, arena: bool = True,
                device: str | None = None) -> ort.InferenceSession:
        """A session for ``model`` (a graph derived from this one) on ``device`` (default: the graph's),
        reading the shared weights.

        ``spinning=False`` for sessions that run one after another (the parts of a partitioned run):
        idle threads of the previous part would otherwise spin and take the cores from the next one.
        ``arena=False``: no CPU memory arena, so a run's memory is freed when it ends and what one run
        takes can be measured (patching's memory budget); slower on large tensors.
        """
        options = session_options()
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = arena
        names = [i.name for i in model.graph.initializer
                 if i.name in self._ort_weights and i.data_location == onnx.TensorProto.EXTERNAL]
        options.add_external_initializers(names, [self._ort_weights[n] for n in names])
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers_for(device or self.device),
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))

    def replace_proto(self, proto: onnx.ModelProto) -> None:
        """Run ``proto`` from now on: a rewrite of this graph reading the same shared weights."""
        self.proto = proto
        self.replaced = True
        self.output_names = [o.name for o in proto.graph.output]
        self.input_names = {i.name for i in proto.graph.input}
        self._sessions.clear()
        self._types = None
        self.__dict__.pop("tensor_names", None)  # cached from the old proto

    def to(self, device: str) -> None:
        """Run on ``device`` from now on (all blocks: a split is undone); the sessions are made again there
        (the weights stay shared)."""
        if device != self.device or self.split is not None:
            self.device, self.split = device, None
            self._sessions.clear()

    def split_across(self, split: DeviceSplit | None) -> None:
        """Run the block ranges of ``split`` as separate sessions on their devices (None: one session)."""
        self.split = split if split is not None and split.n_devices > 1 else None
        self._sessions.clear()

    def cached(self, key: tuple, build: Callable[[], T]) -> T:
        """``build()``'s result, kept in the session cache (least recently used entries go first)."""
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        value = self._sessions[key] = build()
        if len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)
        return value

    @functools.cached_property
    def tensor_names(self) -> frozenset[str]:
        """Every tensor a run may ask for: graph outputs and the outputs of every node."""
        return frozenset(self.output_names) | {out for node in self.proto.graph.node for out in node.output}

    @property
    def types(self) -> dict[str, onnx.ValueInfoProto]:
        """Every tensor's type, inferred once (partitioned runs need the types of intermediate tensors)."""
        if self._types is None:
            from graphlens.rewrite.partition import value_types

            self._types = value_types(self.proto)
        return self._types

    def run(
        self, outputs: Iterable[str], feeds: Mapping[str, np.ndarray], fed: Mapping[str, Iterable[str]] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the specialised graph; returns ``{output name: array}``."""
        if self.split is not None:
            from graphlens.runtime.partitioned import run_partitioned

            return run_partitioned(self, (), outputs, feeds, None, None, fed)
        session = self.session(outputs, fed)
        names = [o.name for o in session.get_outputs()]
        self.session_runs += 1
        return dict(zip(names, session.run(names, self._feeds_for(session, feeds))))

    def _feeds_for(self, session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` less the defaulted inputs that ``session``'s specialised graph does not read."""
        defaulted = [name for name in feeds if name in self.input_defaults]
        if not defaulted:
            return dict(feeds)
        reads = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}
        return {name: value for name, value in feeds.items() if name in reads or name not in self.input_defaults}


def _nbytes(init: onnx.TensorProto) -> int:
    count = int(np.prod(init.dims)) if len(init.dims) else 1
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
