"""SAEs, transcoders and linear probes inside the graph (SAELens' formats and hook names).

- ``read_sae(folder)``: an SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) as numpy, no torch.
- ``attach(bundle, {hook: folder}, out, use_error_term=False, probes=...)``: a new bundle with them
  spliced in (CLI ``graphlens attach``).
- On a loaded model: ``add_sae``, ``reset_saes``, ``run_with_saes``, ``run_with_cache_with_saes`` (as
  SAELens' ``HookedSAETransformer``; ``graphlens.saes.facade``).
"""

from graphlens.saes.attach import attach
from graphlens.saes.reader import SAEWeights, read_sae

__all__ = ["SAEWeights", "attach", "read_sae"]
