"""An instrumented HF model → a plain ONNX graph with ``graphlens.Site`` markers (torch.onnx, dynamo)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from graphlens.architectures import Architecture
from graphlens.export.instrument import instrument
from graphlens.export.markers import TRANSLATION_TABLE

# Example sizes ≥ 2: the exporter specialises dynamic dims whose example size is 0 or 1.
EXAMPLE_BATCH, EXAMPLE_POS = 2, 8


class _Logits(nn.Module):
    """``input_ids [batch, pos]`` → ``logits [batch, pos, d_vocab_out]``; no KV cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # explicit [batch, pos] positions: hook_pos_embed then has TransformerLens' batch dimension
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        return self.model(input_ids=input_ids, position_ids=positions, use_cache=False).logits


def untie_unembed(model: nn.Module) -> None:
    """Give the unembedding its own weight and a (zero) bias, so processing can rewrite them alone."""
    head = model.get_output_embeddings()
    weight = nn.Parameter(head.weight.detach().clone())
    bias = head.bias if head.bias is not None else nn.Parameter(torch.zeros(head.out_features, dtype=weight.dtype))
    new_head = nn.Linear(head.in_features, head.out_features, bias=True, dtype=weight.dtype)
    new_head.weight, new_head.bias = weight, bias
    model.set_output_embeddings(new_head)
    model.config.tie_word_embeddings = False


def export_plain(model: nn.Module, arch: Architecture, cfg: dict, opset: int = 18) -> onnx.ModelProto:
    """Export ``model`` with every site of ``arch`` marked; initializers keep their HF parameter names."""
    untie_unembed(model)
    instrument(model, arch, cfg)
    wrapper = _Logits(model).eval()
    example = torch.zeros(EXAMPLE_BATCH, EXAMPLE_POS, dtype=torch.long)
    batch, pos = torch.export.Dim("batch"), torch.export.Dim("pos", max=cfg["n_ctx"])
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            optimize=False,  # the optimiser merges equal initializers and folds transposes into new ones
            opset_version=opset,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes={"input_ids": {0: batch, 1: pos}},
            custom_translation_table=TRANSLATION_TABLE,
            verbose=False,
        )
    proto = program.model_proto
    _strip_prefix(proto, "model.")
    _constants_as_tensors(proto)
    return proto


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


def _strip_prefix(proto: onnx.ModelProto, prefix: str) -> None:
    """Initializer names come out as ``model.<hf name>`` (the wrapper's attribute); keep the HF name."""
    renamed = {}
    for init in proto.graph.initializer:
        if init.name.startswith(prefix):
            renamed[init.name] = init.name[len(prefix):]
            init.name = renamed[init.name]
    for node in proto.graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
    for inp in proto.graph.input:
        inp.name = renamed.get(inp.name, inp.name)
