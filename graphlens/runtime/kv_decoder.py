"""One generation step on the bundle's decoder graph, the KV cache kept as ONNX Runtime values.

The present keys/values a step returns are bound, as they are, as the next step's past: they never
become numpy arrays, and on CUDA they stay in device memory (IOBinding). Only the logits of the last
position and the hook outputs asked for come back to the host.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnxruntime as ort
from jaxtyping import Float, Int

from graphlens.bundle import BundleError, read_manifest
from graphlens.bundle_check import load_graph
from graphlens.runtime.mapped_weights import MappedWeights
from graphlens.rewrite.weights import Processing
from graphlens.runtime.graph import LOGITS, BundleGraph
from graphlens.runtime.partitioned import HookCaller, run_partitioned


def ort_device(device: str) -> tuple[str, int]:
    if device.startswith("cuda"):
        return "cuda", int(device.split(":")[1]) if ":" in device else 0
    return "cpu", 0


def load_decoder_graph(model) -> BundleGraph:
    """The decoder graph of ``model``'s bundle, with the weight processing ``model`` was loaded with."""
    entry = model.manifest.get("decoder")
    if not entry and model.manifest.get("intervention"):
        source = model.manifest["intervention"].get("source_bundle")
        raise BundleError(
            f"{model.bundle_dir} was written by `graphlens intervene` and has no KV-cache decoder graph, so it cannot "
            f"generate; generate with its source bundle ({source}) and the same change as feeds= or hooks instead"
        )
    if not entry:
        raise BundleError(
            f"{model.bundle_dir} has no decoder graph (bundles exported before generation support); "
            f"export it again with `graphlens export {model.manifest['source']['model']}`"
        )
    proto = load_graph(model.bundle_dir, model.manifest, entry["file"], "decoder.file", list(entry["hook_names"]),
                       read_weights=False)
    # the decoder on disk has the bundle's processing; bring it to what the model was loaded with
    loaded = model.manifest
    model.manifest = read_manifest(model.bundle_dir)
    try:
        model._apply_missing_processing(proto, Processing(**loaded["processing"]))
    finally:
        model.manifest = loaded
    graph = BundleGraph(proto, model.cfg.device, mapped=getattr(model, "mapped_weights", None) or MappedWeights(model.bundle_dir))
    _share_weights(graph, model.graph)
    graph.split_across(model.graph.split)  # the same blocks on the same devices as the model's graph
    return graph


def _share_weights(graph: BundleGraph, main: BundleGraph) -> None:
    """Let ``graph`` read the weights it has in common with ``main`` from ``main``'s copy (one copy in memory):
    the same bytes of the same file (no comparison needed), or equal values."""
    for name, array in list(graph.weights.items()):
        other = main.weights.get(name)
        if other is None or other.shape != array.shape or other.dtype != array.dtype:
            continue
        source = graph.weight_sources.get(name)
        if (source is not None and source == main.weight_sources.get(name)) or np.array_equal(other, array):
            graph.weights[name] = other
            graph._ort_weights[name] = main._ort_weights[name]


class KVDecoder:
    """Runs decoder steps for one batch, holding its past keys/values between steps."""

    def __init__(self, graph: BundleGraph, n_layers: int, n_kv_heads: int, d_head: int, batch: int, dtype=np.float32):
        self.graph = graph
        self.device_type, self.device_id = ort_device(graph.device)
        self.past_names = [f"past_key_values.{layer}.{kind}" for layer in range(n_layers) for kind in ("key", "value")]
        self.present_names = [f"present.{layer}.{kind}" for layer in range(n_layers) for kind in ("key", "value")]
        self._empty = np.zeros((batch, n_kv_heads, 0, d_head), dtype=dtype)
        self.reset()

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    @property
    def past_length(self) -> int:
        return self.past[0].shape()[2]

    def reset(self) -> None:
        """Forget the past (the next step starts from an empty cache)."""
        self.past: list[ort.OrtValue] = [self._value(self._empty) for _ in self.past_names]

    def step(
        self,
        input_ids: Int[np.ndarray, "batch new"],
        attention_mask: Int[np.ndarray, "batch past_plus_new"],
        position_ids: Int[np.ndarray, "batch new"],
        hooks: Iterable[str] = (),
        feeds: Mapping[str, np.ndarray] | None = None,
        fed: Mapping[str, Iterable[str]] | None = None,
        hooked: Sequence[str] = (),
        call_hooks: HookCaller | None = None,
        given: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[Float[np.ndarray, "batch new d_vocab_out"], dict[str, np.ndarray]]:
        """Run the new positions; returns their logits and the hook outputs asked for.

        ``hooked`` sites run their Python hooks (``call_hooks``) on the new positions; the step is then
        cut at those sites (``run_partitioned``) and the cache makes a round trip through numpy.
        ``given``: graph tensors fed instead of computed (the token embeddings of an embeddings input).
        """
        hooks = list(hooks)
        if hooked or given or self.graph.split is not None:  # cut at hooks, given tensors or device changes
            return self._step_with_hooks(input_ids, attention_mask, position_ids, hooks, feeds, fed, hooked, call_hooks,
                                         given)
        session = self.graph.session([LOGITS, *self.present_names, *hooks], fed)
        binding = session.io_binding()
        used = {i.name for i in session.get_inputs()}  # a model without positions (Bloom's ALiBi) has none
        for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask), ("position_ids", position_ids)):
            if name in used:
                binding.bind_ortvalue_input(name, self._value(np.asarray(array, dtype=np.int64)))
        for name, value in zip(self.past_names, self.past):
            binding.bind_ortvalue_input(name, value)
        for name, array in (feeds or {}).items():
            binding.bind_ortvalue_input(name, self._value(np.asarray(array)))
        binding.bind_output(LOGITS, "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device_type, self.device_id)
        for name in hooks:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        self.graph.session_runs += 1
        values = dict(zip([LOGITS, *self.present_names, *hooks], binding.get_outputs()))  # in bind order
        self.past = [values[name] for name in self.present_names]
        return values[LOGITS].numpy(), {name: values[name].numpy() for name in hooks}

    def _step_with_hooks(self, input_ids, attention_mask, position_ids, hooks, feeds, fed, hooked, call_hooks, given=None):
        inputs = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": np.asarray(attention_mask, dtype=np.int64),
                  "position_ids": np.asarray(position_ids, dtype=np.int64), **(feeds or {}),
                  **{name: value.numpy() for name, value in zip(self.past_names, self.past)}}
        results = run_partitioned(self.graph, hooked, [LOGITS, *self.present_names, *hooks], inputs, call_hooks, given, fed)
        self.past = [self._value(results[name]) for name in self.present_names]
        return results[LOGITS], {name: results[name] for name in hooks}

    def bounded_step(
        self,
        input_ids: Int[np.ndarray, "batch new"],
        attention_mask: Int[np.ndarray, "batch past_plus_new"],
        position_ids: Int[np.ndarray, "batch new"],
        layers: range,
        outputs: Sequence[str],
        given: Mapping[str, np.ndarray],
        hooked: Sequence[str] = (),
        call_hooks: HookCaller | None = None,
    ) -> dict[str, np.ndarray]:
        """Run only the blocks ``layers`` (start_at_layer / stop_at_layer): ``given`` tensors are fed instead of
        computed, and only those blocks' new keys/values are taken (the others keep their past, as in TransformerLens)."""
        presents = [f"present.{layer}.{kind}" for layer in layers for kind in ("key", "value")]
        inputs = {"input_ids": np.asarray(input_ids, dtype=np.int64), "attention_mask": np.asarray(attention_mask, dtype=np.int64),
                  "position_ids": np.asarray(position_ids, dtype=np.int64),
                  **{name: value.numpy() for name, value in zip(self.past_names, self.past)}}
        results = run_partitioned(self.graph, hooked, [*outputs, *presents], inputs, call_hooks, given, None)
        for layer in layers:
            self.past[2 * layer] = self._value(results[f"present.{layer}.key"])
            self.past[2 * layer + 1] = self._value(results[f"present.{layer}.value"])
        return results
