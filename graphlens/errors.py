"""Every error graphlens raises: one hierarchy, rooted at :class:`GraphlensError`.

Each class also derives from the builtin a TransformerLens user would catch (``KeyError`` for an unknown
hook name, ``ValueError`` for a bad argument, ``TypeError`` for a wrong type), so existing ``except``
clauses keep working. Messages name the problem and the fix in one line.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class GraphlensError(Exception):
    """Base of every error graphlens raises on purpose."""


class InputError(GraphlensError, ValueError):
    """A bad argument to the public API: tokens, feeds, options, shapes."""


class InputTypeError(GraphlensError, TypeError):
    """An argument of the wrong type (e.g. float token ids, a feed of the wrong dtype)."""


class UnknownHookError(GraphlensError, KeyError):
    """A hook name the model does not have; the message suggests the nearest names."""

    def __init__(self, name: str, known: Iterable[str]):
        known = list(known)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Nearest: {', '.join(close)}." if close else f" The model has {len(known)} hooks; see model.hook_names."
        super().__init__(f"unknown hook name {name!r}.{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BundleError(GraphlensError, ValueError):
    """A folder that is not a usable graphlens bundle (missing, damaged, or inconsistent)."""


class SpecError(GraphlensError, ValueError):
    """An intervention spec that cannot be compiled; the message names the entry and the problem."""


class HookResultError(GraphlensError, ValueError):
    """A hook returned something that cannot replace the activation."""


class UnsupportedArchitectureError(GraphlensError, ValueError):
    """A Hugging Face architecture (or a setting of one) graphlens cannot export; names the supported ones."""


class ExportError(GraphlensError, RuntimeError):
    """An export that cannot proceed (source not found, Hub unreachable, exporter failure)."""


class DeviceError(GraphlensError, RuntimeError):
    """A device that ONNX Runtime does not offer here (e.g. "cuda" without onnxruntime-gpu)."""


class DataError(GraphlensError, ValueError):
    """A dataset file for ``graphlens harvest`` that cannot be read (format, column, token ids)."""


class HarvestError(GraphlensError, RuntimeError):
    """A harvest that cannot continue (output folder in the way, a resume that does not match, disk full)."""


class BundleWarning(UserWarning):
    """A bundle that loads but deserves attention (e.g. an old format version without file hashes)."""


class InputIndexError(GraphlensError, IndexError):
    """An index (layer, position, slice) outside what the model or array has."""


class NotCachedError(GraphlensError, KeyError):
    """A valid hook name that this cache does not hold (it was filtered out or not computed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NotSupportedError(GraphlensError, NotImplementedError):
    """A TransformerLens feature graphlens does not offer (gradients, shortformer, ...)."""


class MissingDependencyError(GraphlensError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""
