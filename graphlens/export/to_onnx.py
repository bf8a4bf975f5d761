"""An instrumented HF model → a plain ONNX graph with ``graphlens.Site`` markers (torch.onnx, dynamo)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from graphlens.architectures import Architecture
from graphlens.errors import ExportError
from graphlens.export.external import detach_weights
from graphlens.export.instrument import KVSlot, KVState, instrument
from graphlens.export.markers import TRANSLATION_TABLE

# Example sizes ≥ 2: the exporter specialises dynamic dims whose example size is 0 or 1.
EXAMPLE_BATCH, EXAMPLE_POS, EXAMPLE_PAST = 2, 8, 3


def example_sizes(cfg: dict) -> tuple[int, int]:
    """The traced ``(pos, past)`` lengths: EXAMPLE_POS and EXAMPLE_PAST, capped at ``n_ctx`` (each ≥ 2, see above)."""
    n_ctx = int(cfg["n_ctx"])
    if n_ctx < 2:
        raise ExportError(f"n_ctx={n_ctx}: graphlens exports models with a context of at least 2 positions")
    return min(EXAMPLE_POS, n_ctx), min(EXAMPLE_PAST, n_ctx)


class _Logits(nn.Module):
    """``input_ids``, ``attention_mask`` (0 = padding), ``position_ids``, all ``[batch, pos]`` →
    ``logits [batch, pos, d_vocab_out]``; no KV cache.

    The padding mask reaches the attention function as the decoder's does (a KVState without a past):
    padded keys are never attended and padded positions get a zero positional embedding. The
    defaults that let a plain ``input_ids`` feed run are added to the ONNX graph afterwards
    (``graphlens.rewrite.mask_inputs``).
    """

    def __init__(self, model: nn.Module, slot: KVSlot):
        super().__init__()
        self.model, self.slot = model, slot

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        self.slot.state = KVState(attention_mask.bool(), None)
        try:
            return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        finally:
            self.slot.state = None


def past_names(n_layers: int) -> list[str]:
    return [f"past_key_values.{layer}.{kind}" for layer in range(n_layers) for kind in ("key", "value")]


def present_names(n_layers: int) -> list[str]:
    return [f"present.{layer}.{kind}" for layer in range(n_layers) for kind in ("key", "value")]


class _Decoder(nn.Module):
    """One step with a KV cache, as TransformerLens runs it (hooks see only the new positions).

    ``input_ids [batch, new]``, ``attention_mask [batch, past+new]`` (0 = padding),
    ``position_ids [batch, new]``, ``past_key_values.L.key/value [batch, n_kv_heads, past, d_head]``
    → ``logits [batch, new, d_vocab_out]``, ``present.L.key/value [batch, n_kv_heads, past+new, d_head]``.
    """

    def __init__(self, model: nn.Module, slot: KVSlot):
        super().__init__()
        self.model, self.slot = model, slot

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        state = KVState(attention_mask.bool(), pairs)
        self.slot.state = state
        try:
            logits = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
        finally:
            self.slot.state = None
        return (logits, *[t for pair in state.present for t in pair])


def untie_unembed(model: nn.Module) -> None:
    """Give the unembedding its own weight and a (zero) bias, so processing can rewrite them alone."""
    head = model.get_output_embeddings()
    tied = head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    weight = nn.Parameter(head.weight.detach().clone()) if tied else head.weight  # a copy only when shared
    bias = head.bias if head.bias is not None else nn.Parameter(torch.zeros(head.out_features, dtype=weight.dtype))
    new_head = nn.Linear(head.in_features, head.out_features, bias=True, dtype=weight.dtype)
    new_head.weight, new_head.bias = weight, bias
    model.set_output_embeddings(new_head)
    model.config.tie_word_embeddings = False


def add_zero_biases(model: nn.Module, arch: Architecture, cfg: dict) -> None:
    """Give the Linear modules the adapter lists in ``zero_biases`` a zero bias where HF has none."""
    for path in arch.zero_biases:
        for layer in range(cfg["n_layers"]) if "{layer}" in path else [None]:
            linear = model.get_submodule(path.format(layer=layer))
            if linear.bias is None:
                weight = linear.weight
                linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))


def _prepare(model: nn.Module, arch: Architecture, cfg: dict) -> KVSlot:
    """Untie the unembedding and install the markers, once per model."""
    if getattr(model, "_graphlens_slot", None) is None:
        untie_unembed(model)
        add_zero_biases(model, arch, cfg)
        model._graphlens_slot = instrument(model, arch, cfg)
    return model._graphlens_slot


def _export(wrapper: nn.Module, args: tuple, names: tuple[list[str], list[str]], dynamic: dict,
            opset: int) -> tuple[onnx.ModelProto, dict[str, torch.Tensor]]:
    """The exported graph without weight bytes (external-data placeholders) and its initializers' tensors."""
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper.eval(),
            args,
            dynamo=True,
            optimize=False,  # the optimiser merges equal initializers and folds transposes into new ones
            opset_version=opset,
            input_names=names[0],
            output_names=names[1],
            dynamic_shapes=dynamic,
            custom_translation_table=TRANSLATION_TABLE,
            verbose=False,
        )
    proto, weights = detach_weights(program.model, "model.")  # initializers keep their HF names
    del program
    _constants_as_tensors(proto)
    return proto, weights


def export_plain(model: nn.Module, arch: Architecture, cfg: dict, opset: int = 18) -> tuple[onnx.ModelProto, dict]:
    """Export ``model`` with every site of ``arch`` marked; initializers keep their HF parameter names and
    are placeholders for the tensors returned beside the graph (``external.detach_weights``).

    Inputs ``input_ids``, ``attention_mask``, ``position_ids`` (all ``[batch, pos]``), output ``logits``.
    """
    slot = _prepare(model, arch, cfg)
    b, pos = EXAMPLE_BATCH, example_sizes(cfg)[0]
    args = (torch.zeros(b, pos, dtype=torch.long), torch.ones(b, pos, dtype=torch.long),
            torch.arange(pos).expand(b, pos).contiguous())
    batch, pos_d = torch.export.Dim("batch"), torch.export.Dim("pos", max=cfg["n_ctx"])
    dims = {0: batch, 1: pos_d}
    inputs = ["input_ids", "attention_mask", "position_ids"]
    return _export(_Logits(model, slot), args, (inputs, ["logits"]), {name: dims for name in inputs}, opset)


def export_decoder(model: nn.Module, arch: Architecture, cfg: dict, opset: int = 18) -> tuple[onnx.ModelProto, dict]:
    """Export the KV-cache step graph (see ``_Decoder``), marked like ``export_plain``'s graph."""
    slot = _prepare(model, arch, cfg)
    n_layers, n_kv = cfg["n_layers"], cfg.get("n_key_value_heads") or cfg["n_heads"]
    b, (new, past) = EXAMPLE_BATCH, example_sizes(cfg)
    dtype = next(model.parameters()).dtype
    kv = [torch.zeros(b, n_kv, past, cfg["d_head"], dtype=dtype) for _ in range(2 * n_layers)]
    args = (torch.zeros(b, new, dtype=torch.long), torch.ones(b, past + new, dtype=torch.long),
            # the values only need to index W_pos: clipped to the context for a short one
            torch.arange(past, past + new).clamp(max=cfg["n_ctx"] - 1).expand(b, new).contiguous(), *kv)
    batch, new_d = torch.export.Dim("batch"), torch.export.Dim("pos", max=cfg["n_ctx"])
    past_d = torch.export.Dim("past", max=cfg["n_ctx"])
    inputs = ["input_ids", "attention_mask", "position_ids", *past_names(n_layers)]
    dynamic = {"input_ids": {0: batch, 1: new_d}, "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
               "position_ids": {0: batch, 1: new_d}, "past": tuple({0: batch, 2: past_d} for _ in kv)}
    proto, weights = _export(_Decoder(model, slot), args, (inputs, ["logits", *present_names(n_layers)]), dynamic, opset)
    mask = next(i for i in proto.graph.input if i.name == "attention_mask")
    mask.type.tensor_type.shape.dim[1].dim_param = "past + pos"  # the exporter names it after a symbol
    return proto, weights


_LIST_ATTRS = {"value_ints": np.int64, "value_floats": np.float32}
_SCALAR_ATTRS = {"value_int": np.int64, "value_float": np.float32}


def _constants_as_tensors(proto: onnx.ModelProto) -> None:
    """Rewrite Constant(value_ints=[...]) as Constant(value=tensor): graphsurgeon cannot hold empty lists."""
    for node in proto.graph.node:
        if node.op_type != "Constant" or node.attribute[0].name == "value":
            continue
        attr = node.attribute[0]
        value = onnx.helper.get_attribute_value(attr)
        if attr.name in _LIST_ATTRS:
            array = np.array(list(value), dtype=_LIST_ATTRS[attr.name])
        elif attr.name in _SCALAR_ATTRS:
            array = np.array(value, dtype=_SCALAR_ATTRS[attr.name])
        else:
            continue
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(array)))
