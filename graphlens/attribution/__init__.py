"""Gradients at hook sites and attribution patching, without torch (``graphlens.grad`` builds the graphs)."""

from graphlens.attribution.gradients import run_with_grads
from graphlens.attribution.metrics import log_prob_grad, logit_diff_grad, loss_grad
from graphlens.attribution.patch import attr_patch

__all__ = ["attr_patch", "log_prob_grad", "logit_diff_grad", "loss_grad", "run_with_grads"]
