"""The site marker: an opaque op that tags a tensor with its hook name through torch.onnx.

In torch it is an identity (a clone, so the exporter cannot alias it away). In ONNX it becomes one
``graphlens.Site(x, name=...)`` node in a custom domain, which no exporter pass can fold or remove;
the rewrite stage replaces every one of them with hook outputs and substitution inputs.
"""

from __future__ import annotations

import onnx
import onnxscript
import torch
from onnx.defs import OpSchema

DOMAIN = "graphlens"
OP_TYPE = "Site"

_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]


def _register_schema() -> None:
    if onnx.defs.has(OP_TYPE, DOMAIN):
        return
    onnx.defs.register_schema(
        OpSchema(
            OP_TYPE,
            DOMAIN,
            1,
            doc="Identity that marks a TransformerLens hook site; replaced by graphlens.rewrite.",
            inputs=[OpSchema.FormalParameter("x", "T")],
            outputs=[OpSchema.FormalParameter("y", "T")],
            type_constraints=[("T", _FLOAT_TYPES, "activation types")],
            attributes=[OpSchema.Attribute("name", OpSchema.AttrType.STRING, "hook name")],
        )
    )


_register_schema()
_opset = onnxscript.values.Opset(DOMAIN, 1)


@torch.library.custom_op("graphlens::site", mutates_args=())
def site(x: torch.Tensor, name: str) -> torch.Tensor:
    """Mark ``x`` as the hook site ``name`` (identity in torch)."""
    return x.clone()


@site.register_fake
def _site_fake(x: torch.Tensor, name: str) -> torch.Tensor:
    return torch.empty_like(x)


def _site_to_onnx(x, name: str):
    return _opset.Site(x, name=name)


TRANSLATION_TABLE = {torch.ops.graphlens.site.default: _site_to_onnx}
