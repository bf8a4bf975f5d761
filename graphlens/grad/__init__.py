"""Gradients as ONNX graphs: reverse-mode differentiation of a bundle's forward graph (no torch)."""

from graphlens.grad.backward import GRAD_SUFFIX, LOGITS_GRAD, LOSS_TARGETS, LOSS_WEIGHTS, grad_name, with_backward

__all__ = ["GRAD_SUFFIX", "LOGITS_GRAD", "LOSS_TARGETS", "LOSS_WEIGHTS", "grad_name", "with_backward"]
