"""One ONNX Runtime pass computing forward outputs and the gradients at hook sites (forward + backward).

The combined graph is specialised per request (outputs, hooks whose gradients are asked, sites fed,
metric kind) from the bundle's ``backward.onnx`` when it has one (``graphlens gradients``), else built
from the forward (``graphlens.grad.with_backward``), and cached with the model's other sessions.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from jaxtyping import Float, Int

from graphlens.errors import InputError, InputTypeError
from graphlens.bundle import read_manifest
from graphlens.bundle_check import load_graph
from graphlens.grad import LOGITS_GRAD, LOSS_TARGETS, LOSS_WEIGHTS, grad_name, with_backward
from graphlens.grad.bundle_file import request_graph
from graphlens.runtime.graph import LOGITS
from graphlens.runtime.inputs import as_numpy, check_attention_mask, check_tokens


def loss_weights(
    tokens: Int[np.ndarray, "batch pos"], attention_mask: Int[np.ndarray, "batch pos"] | None = None
) -> tuple[Int[np.ndarray, "batch pos"], Float[np.ndarray, "batch pos"]]:
    """The next token at each position and each prediction's weight in the mean loss (0 at the last
    position and at predictions to or from padding), as ``lm_cross_entropy_loss`` averages."""
    if tokens.shape[1] < 2:
        raise InputError("the loss needs at least 2 positions")
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    weights = np.zeros(tokens.shape, np.float64)
    weights[:, :-1] = 1.0 if attention_mask is None else attention_mask[:, 1:] * attention_mask[:, :-1]
    total = weights.sum()
    if total == 0:
        raise InputError("the loss has no predictions between real tokens (everything is padding)")
    return targets.astype(np.int64), (weights / total).astype(np.float32)


def run_with_grads(
    model,
    tokens: Int[np.ndarray, "batch pos"],
    outputs: Iterable[str],
    grads_of: Iterable[str],
    logits_grad: Float[np.ndarray, "batch pos d_vocab"] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
    attention_mask: Int[np.ndarray, "batch pos"] | None = None,
) -> dict[str, np.ndarray]:
    """``outputs`` (hook names, "logits") and ``<hook>_grad`` for each hook in ``grads_of``, in one pass.

    The gradients are of ``sum(logits * logits_grad)``, or of the mean next-token loss when
    ``logits_grad`` is None. ``feeds``: substitution inputs as in ``run_graph`` (a patched entry passes
    no gradient upstream). ``attention_mask``: 1 = token, 0 = padding (also weights the loss).
    """
    tokens = check_tokens(tokens, model.cfg.d_vocab, model.cfg.n_ctx)
    outputs, grads_of = list(outputs), list(grads_of)
    model._checked_outputs(outputs + grads_of, allow_empty=True)
    if not grads_of:
        raise InputError("no gradients asked for: name the hooks whose gradients to compute")
    feeds, fed = model.checked_feeds(tokens, feeds)
    if attention_mask is not None:
        attention_mask = check_attention_mask(attention_mask, tokens)
    feeds = {**model.model_feeds(tokens, attention_mask), **feeds}
    if logits_grad is None:
        seed = "loss"
        feeds[LOSS_TARGETS], feeds[LOSS_WEIGHTS] = loss_weights(tokens, attention_mask)
    else:
        seed = "logits_grad"
        feeds[LOGITS_GRAD] = _checked_cotangent(logits_grad, tokens, model)
    graph = model.graph
    fed_key = tuple(sorted((h, tuple(sorted(k))) for h, k in fed.items()))
    key = ("grad", tuple(outputs), tuple(grads_of), fed_key, seed)

    def build():
        stored = bundle_backward(model)
        if stored is not None:
            return graph.compile(request_graph(stored, outputs, grads_of, dict(fed_key), seed))
        return graph.compile(with_backward(graph.proto, graph.types, outputs, grads_of, dict(fed_key), seed))

    session = graph.cached(key, build)
    names = [o.name for o in session.get_outputs()]
    graph.session_runs += 1
    return dict(zip(names, session.run(names, graph._feeds_for(session, feeds))))


def bundle_backward(model):
    """The bundle's ``backward.onnx`` reading the model's shared weights, or None where the bundle has
    none or the model's graph is not the bundle's (processing applied at load, a replaced graph, bfloat16)."""
    graph = model.graph
    entry = model.manifest.get("backward")
    if not entry or graph.replaced or model.manifest["dtype"] == "bfloat16":
        return None

    def load():
        if read_manifest(model.bundle_dir)["processing"] != model.manifest["processing"]:
            return None
        proto = load_graph(model.bundle_dir, model.manifest, entry["file"], "backward.file", model.hook_names,
                           read_weights=False)
        main = {i.name: i for i in graph.proto.graph.initializer}
        for init in proto.graph.initializer:
            if init.name in main:
                init.CopyFrom(main[init.name])  # the same weight, held once
        graph.share_weights(proto, model.mapped_weights)
        return proto

    return graph.cached(("backward-file",), load)


def _checked_cotangent(value, tokens: np.ndarray, model) -> np.ndarray:
    array = as_numpy(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputTypeError(f"logits_grad must be a float array, not {array.dtype}")
    shape = (*tokens.shape, model.cfg.d_vocab_out)
    if array.shape != shape:
        try:
            array = np.broadcast_to(array, shape)
        except ValueError:
            raise InputError(f"logits_grad has shape {array.shape}; it must broadcast to the logits' {shape}") from None
    if not np.isfinite(array).all():
        raise InputError("logits_grad has nan or inf entries")
    return np.ascontiguousarray(array, dtype=np.dtype(model.cfg.dtype) if model.cfg.dtype != "bfloat16" else np.float32)


__all__ = ["LOGITS", "grad_name", "loss_weights", "run_with_grads"]
