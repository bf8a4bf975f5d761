"""Analysis utilities (numpy ports of TransformerLens helpers)."""

from graphlens.analysis.composition import composition_scores
from graphlens.analysis.factored_matrix import FactoredMatrix
from graphlens.analysis.lens import head_logit_attribution, logit_lens

__all__ = ["FactoredMatrix", "composition_scores", "head_logit_attribution", "logit_lens"]
