"""The small parts of TransformerLens' model API: devices (``to``/``cuda``/``cpu``/``eval``), token helpers."""

from __future__ import annotations

import numpy as np

from graphlens.errors import InputError
from graphlens.runtime.session import resolve_device

_DTYPE_NAMES = {"float32", "float16", "bfloat16", "float64", "torch.float32", "torch.float16", "torch.bfloat16"}


class TLFacadeMixin:
    """``model.to(device)`` re-creates the ONNX Runtime sessions on that device (a no-op on the same one)."""

    def to(self, device_or_dtype, print_details: bool = True):
        """Move the model to a device ("cpu", "cuda", "cuda:N"); dtypes are fixed at export."""
        name = str(device_or_dtype)
        if name in _DTYPE_NAMES or name.startswith("torch.") and "float" in name:
            held = self.manifest["dtype"]
            if name.rpartition(".")[2] == held:
                return self
            raise InputError(f"this bundle holds {held} weights; export it again with "
                             f"`graphlens export {self.manifest['source']['model']} --dtype {name.rpartition('.')[2]}`")
        device = resolve_device(name)
        if device == self.cfg.device and self.cfg.n_devices == 1:
            return self
        for graph in (self.graph, self.__dict__.get("_decoder_graph")):
            if graph is not None:
                graph.to(device)  # every block there: a split across devices is undone
        self.cfg.device, self.cfg.n_devices = device, 1
        if print_details:
            print("Moving model to device: ", device)
        return self

    def cuda(self, device: int | str | None = None):
        """``to("cuda")`` (or ``"cuda:N"`` for an int); fails clearly without onnxruntime-gpu."""
        return self.to("cuda" if device is None else f"cuda:{device}" if isinstance(device, int) else str(device))

    def cpu(self):
        return self.to("cpu")

    def eval(self):
        """Inference is all graphlens does: returns the model, as ``nn.Module.eval``."""
        return self

    def train(self, mode: bool = True):
        if mode:
            raise InputError("graphlens runs inference only: there is no training mode (model.eval() is the state)")
        return self

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id, as TransformerLens' ``to_single_str_token``."""
        if not isinstance(int_token, (int, np.integer)) or isinstance(int_token, bool):
            raise InputError(f"to_single_str_token takes one int token id, got {type(int_token).__name__}")
        tokens = self.to_str_tokens(np.array([int(int_token)]))
        return tokens[0]
