"""Gradients at hook sites and attribution patching, without torch (``graphlens.grad`` builds the graphs)."""

from graphlens.attribution.gradients import run_with_grads
from graphlens.attribution.metrics import log_prob_grad, logit_diff_grad, loss_grad

__all__ = ["log_prob_grad", "logit_diff_grad", "loss_grad", "run_with_grads"]
