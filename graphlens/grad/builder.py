"""Appending backward nodes to a graph: fresh names, typed constants, shapes, broadcasting sums."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphlens.errors import NotSupportedError

PREFIX = "graphlens.grad/"  # every tensor and node the backward pass adds is named under it


def _dims(info: onnx.ValueInfoProto | None) -> list | None:
    """Static dims (int, symbol name, or None when unknown) of a tensor; None when the rank is unknown."""
    if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in info.type.tensor_type.shape.dim]


class Builder:
    """Collects the nodes and constants of a backward pass over a graph whose tensor types are known."""

    def __init__(self, types: Mapping[str, onnx.ValueInfoProto], constants: Mapping[str, np.ndarray],
                 prefix: str = PREFIX):
        self.prefix = prefix  # of every name it makes (a second builder over the same graph needs its own)
        self.types = dict(types)
        self.constants = constants  # forward tensors with a known value (Constant nodes, initializers)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}
        self._shapes: dict[str, str] = {}

    # ---- names and nodes ----------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        outputs = [self.fresh(op_type) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(f"node_{op_type}"), **attrs))
        return outputs[0] if n_out == 1 else outputs

    def const(self, value, dtype: np.dtype | int) -> str:
        """A constant initializer (``dtype``: numpy dtype or ONNX element type)."""
        np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(dtype)) if isinstance(dtype, int) else np.dtype(dtype)
        array = np.asarray(value, dtype=np_dtype)
        key = (array.tobytes(), array.shape, np_dtype.str)
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    # ---- types --------------------------------------------------------------------------------------
    def elem_type(self, name: str) -> int:
        info = self.types.get(name)
        if info is None or not info.type.HasField("tensor_type"):
            raise NotSupportedError(f"gradients: the type of tensor {name!r} is unknown")
        return info.type.tensor_type.elem_type

    def is_float(self, name: str) -> bool:
        info = self.types.get(name)
        if info is None:
            return False
        if info.type.HasField("sequence_type"):
            elem = info.type.sequence_type.elem_type.tensor_type.elem_type
        elif info.type.HasField("tensor_type"):
            elem = info.type.tensor_type.elem_type
        else:
            return False
        return elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                        onnx.TensorProto.DOUBLE)

    def dims(self, name: str) -> list | None:
        return _dims(self.types.get(name))

    def rank(self, name: str) -> int:
        dims = self.dims(name)
        if dims is None:
            raise NotSupportedError(f"gradients: the rank of tensor {name!r} is unknown")
        return len(dims)

    def scalar(self, value: float, like: str) -> str:
        """A scalar constant of ``like``'s float type."""
        return self.const(value, self.elem_type(like))

    def shape(self, name: str) -> str:
        if name not in self._shapes:
            self._shapes[name] = self.op("Shape", [name])
        return self._shapes[name]

    def zeros_like(self, name: str) -> str:
        value = helper.make_tensor("value", self.elem_type(name), [1], [0])
        return self.op("ConstantOfShape", [self.shape(name)], value=value)

    def value(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise NotSupportedError(f"gradients: {name!r} must be a constant here")
        return self.constants[name]

    # ---- broadcasting -------------------------------------------------------------------------------
    def unbroadcast(self, grad: str, target: str, grad_like: str | None) -> str:
        """``grad`` (shaped like ``grad_like``, a broadcast of ``target``) summed back to ``target``'s shape.

        Static shapes decide where they can; otherwise the axes to sum are computed in the graph."""
        tdims, gdims = self.dims(target), self.dims(grad_like) if grad_like else None
        if tdims is not None and gdims is not None:
            if len(gdims) > len(tdims):
                lead = len(gdims) - len(tdims)
                grad = self.op("ReduceSum", [grad, self.const(list(range(lead)), np.int64)], keepdims=0)
                gdims = gdims[lead:]
            same = [t is not None and t == g for t, g in zip(tdims, gdims)]
            if all(same):
                return grad
            ones = [i for i, (t, g) in enumerate(zip(tdims, gdims)) if t == 1 and g != 1 and g is not None]
            if all(s or i in ones for i, s in enumerate(same)):
                return self.op("ReduceSum", [grad, self.const(ones, np.int64)], keepdims=1)
        # dynamic: pad target's shape with leading ones, sum where it differs from grad's, reshape
        tshape, gshape = self.shape(target), self.op("Shape", [grad])
        trank = self.op("Size", [tshape])
        grank = self.op("Size", [gshape])
        lead = self.op("Sub", [grank, trank])
        ones = self.op("Expand", [self.const([1], np.int64), self.op("Reshape", [lead, self.const([1], np.int64)])])
        padded = self.op("Concat", [ones, tshape], axis=0)
        differs = self.op("Not", [self.op("Equal", [padded, gshape])])
        axes = self.op("Reshape", [self.op("NonZero", [differs]), self.const([-1], np.int64)])
        summed = self.op("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", [summed, tshape])
