"""Many variants of one site's value, each run through the rest of the model: one plan for a whole sweep.

A patching sweep replaces, say, ``hook_resid_pre`` of every layer in turn. Cutting the graph at
each patched site separately would build sessions for every site (layer 0's cut holds the whole
model, layer 1's nearly all of it, ...). A ``SiteSweep`` cuts the graph once, at *all* the sweep's
sites: one set of small sessions, built once, about the cost of one full session. The unpatched
input runs through every part once; a batch of variants patched at a site then runs only the parts
after it, reading the unpatched values of whatever else crosses that cut, repeated along the batch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jaxtyping import Float, Int

from graphlens.runtime.graph import LOGITS
from graphlens.runtime.partitioned import compiled_plan, run_parts


class SiteSweep:
    """``model`` cut at every one of ``sites`` and run once on ``tokens``; then ``logits(site, values)``.

    ``arena=False``: sessions without ONNX Runtime's memory arena (a measured memory budget needs them).
    """

    def __init__(self, model, tokens: Int[np.ndarray, "batch pos"], sites: Sequence[str],
                 attention_mask: Int[np.ndarray, "batch pos"] | None = None, arena: bool = True):
        self.model = model
        hooked = list(dict.fromkeys([*sites, *model.hooked_sites()]))
        self.plan, self.sessions = compiled_plan(model.graph, hooked, [LOGITS], arena=arena)
        feeds = {**model.graph.input_defaults, **model.model_feeds(tokens, attention_mask)}
        self.values = run_parts(model.graph, self.plan, self.sessions, feeds, model.call_hooks)
        self._part_after = {site: k + 1 for k, part in enumerate(self.plan.parts) for site in part.hooks}
        batch_dim = model.graph.types["input_ids"].type.tensor_type.shape.dim[0].dim_param
        # the graph's defaulted inputs (attention_mask, position_ids) are [batch, pos] when fed, [1, 1] otherwise
        self._batch_major = {
            name: self._leading_dim(name) == batch_dim or name in model.graph.input_defaults
            for part in self.plan.parts for name in part.inputs
        }

    def _leading_dim(self, name: str) -> str | None:
        dims = self.model.graph.types[name].type.tensor_type.shape.dim
        return dims[0].dim_param if dims else None

    def activation(self, site: str) -> np.ndarray:
        """The site's value in the unpatched run (after the model's active hooks)."""
        return self.values[site]

    def supports(self, site: str) -> bool:
        """Whether everything crossing the cut after ``site`` has a leading batch axis (so it can repeat)."""
        return all(self._batch_major[name] for name in self._inputs_after(site) if name != site)

    def _inputs_after(self, site: str) -> set[str]:
        return {name for part in self.plan.parts[self._part_after[site]:] for name in part.inputs}

    def logits(
        self, site: str, patched: Float[np.ndarray, "variants_x_batch ..."], variants: int
    ) -> Float[np.ndarray, "variants_x_batch pos d_vocab"]:
        """Logits of ``variants`` runs (stacked along the batch, variant-major) whose ``site`` is ``patched``."""
        batch = self.values["input_ids"].shape[0]
        # a leading dim of 1 (a default attention_mask [1, 1]) broadcasts over any batch: not repeated
        repeats = lambda a: np.tile(a, (variants,) + (1,) * (a.ndim - 1)) if a.shape[0] == batch else a  # noqa: E731
        values = {name: repeats(self.values[name]) for name in self._inputs_after(site) if name != site}
        values[site] = patched
        values = run_parts(self.model.graph, self.plan, self.sessions, values, self.model.call_hooks,
                           start=self._part_after[site])
        return values[LOGITS]
