"""Analysis utilities (numpy ports of TransformerLens helpers)."""

from graphlens.analysis.factored_matrix import FactoredMatrix

__all__ = ["FactoredMatrix"]
