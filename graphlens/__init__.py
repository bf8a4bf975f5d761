"""graphlens: TransformerLens' hooks and API on ONNX Runtime."""

__version__ = "0.1.0"

from graphlens.analysis import FactoredMatrix  # noqa: E402
from graphlens.intervention import intervene  # noqa: E402
from graphlens.runtime import ActivationCache, HookedTransformer, HookPoint  # noqa: E402
from graphlens.facade import KeyValueCache  # noqa: E402  (after runtime, which imports the facade)
from graphlens.sites import get_act_name  # noqa: E402
from graphlens.slicing import Slice  # noqa: E402

__all__ = ["ActivationCache", "FactoredMatrix", "HookPoint", "HookedTransformer", "KeyValueCache", "Slice", "get_act_name",
           "intervene"]
