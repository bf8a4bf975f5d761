"""``incl_bwd``, ``logits_grad`` and backward hooks for ``HookedTransformer`` (TransformerLens' names).

TransformerLens backpropagates on ``.backward()``; here the metric is named up front: the loss
(``return_type="loss"``) or a cotangent ``logits_grad=C`` (the gradients of ``sum(logits * C)``), and
one pass computes the forward and the gradients. Backward hooks are then called with the gradient at
their site, in backward order (the reverse of the forward's), as ``fn(grad, hook=HookPoint)``.
"""

from __future__ import annotations

import numpy as np

from graphlens.attribution.gradients import run_with_grads
from graphlens.errors import HookResultError, InputError, NotSupportedError
from graphlens.grad import grad_name
from graphlens.runtime.graph import LOGITS


class GradientsMixin:
    """Gradient runs for a model with ``hook_dict``, ``run_graph`` and TransformerLens' forward options."""

    def bwd_hooked_sites(self) -> list[str]:
        """Sites with backward hooks, in forward order."""
        return [n for n in self.hook_names if self.hook_dict[n].bwd_hooks]

    def call_bwd_hooks(self, grads: dict[str, np.ndarray]) -> None:
        """Call each site's backward hooks with its gradient, the last site first."""
        for site in reversed(self.bwd_hooked_sites()):
            point = self.hook_dict[site]
            for handle in list(point.bwd_hooks):
                if handle.hook(grads[grad_name(site)].copy(), hook=point) is not None:
                    raise HookResultError(
                        f"backward hook {getattr(handle.hook, '__name__', handle.hook)!r} on {site} returned a value: "
                        "graphlens' backward hooks read gradients and cannot replace them (return None)")

    def _grad_run(self, input, names: list[str], return_type, loss_per_token: bool, logits_grad, prepend_bos,
                  padding_side, attention_mask, start_at_layer=None, stop_at_layer=None, past_kv_cache=None,
                  tokens=None):
        """``(output, results)`` of one forward + backward pass: ``results`` holds ``names`` and their
        gradients; backward hooks are called."""
        if start_at_layer is not None or stop_at_layer is not None or past_kv_cache is not None or tokens is not None:
            raise NotSupportedError("gradients (incl_bwd, bwd_hooks, logits_grad) need a full run from tokens: "
                                    "drop start_at_layer / stop_at_layer / past_kv_cache")
        if self.hooked_sites():
            raise NotSupportedError("forward hooks and gradients in one run are not supported: feed substitutions "
                                    "instead (graphlens.attribution.run_with_grads(..., feeds=...))")
        if logits_grad is None and (return_type not in ("loss", "both") or loss_per_token):
            raise InputError("gradients (incl_bwd, bwd_hooks) need a scalar metric: pass return_type='loss' (the mean loss) or "
                             "logits_grad=C (d metric / d logits, e.g. graphlens.attribution.logit_diff_grad)")
        tokens = self.tokens_from(input, prepend_bos, padding_side)
        mask = self.padding_mask(tokens, attention_mask, prepend_bos, padding_side)
        grads_of = list(dict.fromkeys(names + self.bwd_hooked_sites()))
        outputs = list(names) + ([LOGITS] if return_type is not None else [])
        results = run_with_grads(self, tokens, outputs, grads_of, logits_grad, attention_mask=mask)
        self.call_bwd_hooks(results)
        output = self._format_output(results.get(LOGITS), tokens, return_type, loss_per_token, mask)
        return output, results
